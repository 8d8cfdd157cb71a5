"""Test scaffolding (see tensorrt_llm/__init__.py): the shapes of
``tensorrt_llm/_torch/pyexecutor/llm_request.py`` the adapter reads.

``_BindingsLlmRequest`` stands in for the C++ class
``bindings.internal.batch_manager.LlmRequest`` (its Python binding exposes
``get_num_tokens(beam)``, ``get_token(beam, pos)``, ``get_tokens(beam)``,
``add_new_token``, ``context_chunk_size``, ``context_current_position``,
``context_remaining_length``, ``is_last_context_chunk``,
``move_to_next_context_chunk``, ``set_finished_reason``, ``finish_by_reason``,
``is_finished``, ``is_finished_due_to_length``, ``orig_prompt_len``,
``pause``, …). ``LlmRequest`` is the Python subclass with the ``py_*`` fields
and ``py_result`` (``PyResult.log_probs``: list per beam of per-position
entries).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Optional

from tensorrt_llm import LAYOUT


class FinishReason(enum.Enum):
    """bindings.executor.FinishReason."""

    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


class LlmRequestState(enum.IntEnum):
    """bindings.LlmRequestState (values as listed in llm_request.py's docstring)."""

    UNKNOWN = 0
    ENCODER_INIT = 1
    CONTEXT_INIT = 2
    GENERATION_IN_PROGRESS = 3
    GENERATION_TO_COMPLETE = 4
    GENERATION_COMPLETE = 5


class Logprob(NamedTuple):
    """tensorrt_llm.executor.result.Logprob."""

    logprob: float
    rank: Optional[int] = None


class SamplingConfig:
    """bindings.SamplingConfig: every parameter is None or a one-element list."""

    def __init__(self, beam_width: int = 1, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, random_seed: int | None = None) -> None:
        self.beam_width = beam_width
        self.temperature = None if temperature is None else [temperature]
        self.top_k = None if top_k is None else [top_k]
        self.top_p = None if top_p is None else [top_p]
        self.random_seed = None if random_seed is None else [random_seed]


class _BindingsLlmRequest:
    """Stand-in for the C++ LlmRequest (beam width 1)."""

    def __init__(self, *, request_id: int, max_new_tokens: int, input_tokens: list[int],
                 sampling_config: SamplingConfig, end_id: int, client_id: int | None,
                 is_streaming: bool = False, return_log_probs: bool = False) -> None:
        self.request_id = request_id
        self.prompt_len = len(input_tokens)
        self._orig_prompt_len = len(input_tokens)
        self.max_new_tokens = max_new_tokens
        self.sampling_config = sampling_config
        self.end_id = end_id
        self.client_id = client_id
        self.streaming = is_streaming
        self.return_log_probs = return_log_probs
        self.state = LlmRequestState.CONTEXT_INIT
        self._tokens = list(input_tokens)
        self._ctx_pos = 0
        self._chunk = self.prompt_len
        self._reasons = [FinishReason.NOT_FINISHED]
        self.is_dummy_request = False
        self.is_child = False
        self.parent_request_id = request_id
        self.decoding_iter = 0

    # tokens
    def get_num_tokens(self, beam: int) -> int:
        return len(self._tokens)

    def get_token(self, beam: int, pos: int) -> int:
        return self._tokens[pos]

    def get_tokens(self, beam: int) -> list[int]:
        return list(self._tokens)

    def add_new_token(self, token: int, beam: int) -> None:
        self._tokens.append(token)

    @property
    def orig_prompt_len(self) -> int:
        return self._orig_prompt_len

    @property
    def max_beam_num_tokens(self) -> int:
        return len(self._tokens)

    # context chunks (the C++ getters refuse once the context phase is over)
    def _in_context(self) -> None:
        if self.state != LlmRequestState.CONTEXT_INIT:
            raise RuntimeError("request is not in the context phase")

    @property
    def context_chunk_size(self) -> int:
        self._in_context()
        return self._chunk

    @context_chunk_size.setter
    def context_chunk_size(self, value: int) -> None:
        self._chunk = min(value, self.prompt_len - self._ctx_pos)

    @property
    def context_current_position(self) -> int:
        return self._ctx_pos

    @context_current_position.setter
    def context_current_position(self, value: int) -> None:
        self._ctx_pos = value
        self._chunk = min(self._chunk, self.prompt_len - value)

    @property
    def context_remaining_length(self) -> int:
        return self.prompt_len - self._ctx_pos

    @property
    def is_last_context_chunk(self) -> bool:
        return self._ctx_pos + self._chunk >= self.prompt_len

    @property
    def is_first_context_chunk(self) -> bool:
        return self._ctx_pos == 0

    def move_to_next_context_chunk(self) -> None:
        self._ctx_pos += self._chunk
        self._chunk = 0

    # lifecycle
    def set_finished_reason(self, reason: FinishReason, beam: int) -> None:
        self._reasons[beam] = reason

    def finish_by_reason(self, reason: FinishReason) -> None:
        self.state = LlmRequestState.GENERATION_COMPLETE
        self._reasons = [reason for _ in self._reasons]

    @property
    def is_finished(self) -> bool:
        return self.state == LlmRequestState.GENERATION_COMPLETE

    @property
    def is_finished_due_to_length(self) -> bool:
        return all(r == FinishReason.LENGTH for r in self._reasons)

    def pause(self, max_input_len: int) -> None:
        """C++ LlmRequest::pause for beam width 1: the generated tokens become
        part of the prompt and the request is prefilled again."""
        new_prompt_len = min(max_input_len, len(self._tokens))
        del self._tokens[new_prompt_len:]
        self.max_new_tokens -= new_prompt_len - self.prompt_len
        self.prompt_len = new_prompt_len
        self.state = LlmRequestState.CONTEXT_INIT
        self._ctx_pos = 0
        self._chunk = self.prompt_len


class PyResult:
    """llm_request.PyResult: the logprob storage (list per beam)."""

    def __init__(self, return_log_probs: bool) -> None:
        self._log_probs: list[list[Any]] | None = [[]] if return_log_probs else None

    def append_log_probs(self, log_probs: list[list[Any]]) -> None:
        if self._log_probs is not None:
            for beam, entries in enumerate(log_probs):
                self._log_probs[beam].extend(entries)

    @property
    def log_probs(self) -> list[list[Any]] | None:
        return self._log_probs


class LlmResult:
    def __init__(self, output_token_ids: list[int], log_probs: list[Any] | None, is_final: bool,
                 sequence_index: int) -> None:
        self.output_token_ids = output_token_ids
        self.log_probs = log_probs
        self.is_final = is_final
        self.sequence_index = sequence_index


class LlmResponse:
    def __init__(self, request_id: int, result: LlmResult | None = None, client_id: int | None = None,
                 error_msg: str | None = None) -> None:
        self.request_id = request_id
        self.result = result
        self.client_id = client_id
        self.error_msg = error_msg


class LlmRequest(_BindingsLlmRequest):
    """llm_request.LlmRequest: the Python fields PyExecutor and the samplers use."""

    def __init__(self, *, num_logprobs: int = 0, logprobs_simple_format: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.py_client_id = kwargs.get("client_id")
        self.py_request_id = self.request_id
        self.py_prompt_len = self.prompt_len
        if LAYOUT == "2026":
            self.py_orig_prompt_len = self.orig_prompt_len
            self.is_cuda_graph_dummy = False
        self.py_max_new_tokens = self.max_new_tokens
        self.py_end_id = self.end_id
        self.py_draft_tokens: list[int] = []
        self.py_last_draft_tokens: list[int] | None = None
        self.py_draft_pages_allocated = 0
        self.py_num_accepted_draft_tokens = 0
        if LAYOUT == "2026":
            # The real count of draft tokens installed for the step, recorded by
            # Drafter.pad_draft_tokens_for_cuda_graph before it pads
            # py_draft_tokens with zeros (llm_request.py at 002f3cc3); the
            # mid-2025 revision has no such field.
            self.py_draft_tokens_effective_len: int | None = None
        self.py_last_context_chunk = (None, None)
        self.py_decoding_iter = 0
        self.py_return_log_probs = self.return_log_probs
        self.py_num_logprobs = num_logprobs
        self.py_logprobs_simple_format = logprobs_simple_format
        self.py_batch_idx = None
        self.is_attention_dp_dummy = False
        self.py_result = PyResult(self.return_log_probs)
        self.child_requests: list[LlmRequest] = []
        # Scaffolding: what the stand-in model does for this request.
        self.fake_stop_at: int | None = None
        self.fake_cached_prefix = 0
        # Scaffolding: draft tokens the stand-in drafter really proposed for
        # the step being launched (py_draft_tokens may hold zeros after them).
        self.fake_real_draft_len = 0
        # Scaffolding: the request fails PyExecutor's validation at activation.
        self.fake_invalid = False

    def finish_by(self, reason: FinishReason, beam: int) -> None:
        """The TorchSampler's way of finishing a request (END_ID, STOP_WORDS, LENGTH)."""
        self.state = LlmRequestState.GENERATION_COMPLETE
        self.set_finished_reason(reason, beam)

    def create_child_request(self, child_id: int) -> "LlmRequest":
        child = LlmRequest(
            num_logprobs=self.py_num_logprobs, logprobs_simple_format=self.py_logprobs_simple_format,
            request_id=child_id, max_new_tokens=self.py_max_new_tokens,
            input_tokens=self._tokens[: self.prompt_len], sampling_config=self.sampling_config,
            end_id=self.end_id, client_id=self.py_client_id, is_streaming=self.streaming,
            return_log_probs=self.return_log_probs)
        child.is_child = True
        child.parent_request_id = self.request_id
        child.fake_stop_at = self.fake_stop_at
        child.fake_cached_prefix = self.fake_cached_prefix
        self.child_requests.append(child)
        return child

    def create_response(self, use_fast_logits: bool = False, mpi_world_rank: int = 0) -> LlmResponse | None:
        generated = self._tokens[self.orig_prompt_len:]
        if not generated and not self.is_finished:
            return None  # nothing to send yet (the C++ serialized result is empty)
        log_probs = None
        if self.py_result.log_probs is not None:
            log_probs = list(self.py_result.log_probs[0])
            if self.streaming:
                # As in the 2026 create_response: a streaming response takes
                # the stored logprobs along and the request starts a new list.
                self.py_result._log_probs = [[]]
        result = LlmResult(generated, log_probs, self.is_finished,
                           sequence_index=0 if not self.is_child else 1)
        request_id = self.parent_request_id if self.is_child else self.py_request_id
        return LlmResponse(request_id, result, self.py_client_id)

    @property
    def is_dummy(self) -> bool:
        return self.is_attention_dp_dummy or getattr(self, "is_cuda_graph_dummy", False) or self.is_dummy_request


class ExecutorRequest:
    """bindings.executor.Request: what the LLM API hands to enqueue_request."""

    def __init__(self, *, input_token_ids: list[int], max_tokens: int, end_id: int, client_id: int,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, return_log_probs: bool = False, num_logprobs: int = 0,
                 logprobs_simple_format: bool = False, n: int = 1, streaming: bool = False) -> None:
        self.input_token_ids = input_token_ids
        self.max_tokens = max_tokens
        self.end_id = end_id
        self.client_id = client_id
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, random_seed=seed)
        self.return_log_probs = return_log_probs
        self.py_num_logprobs = num_logprobs
        self.py_logprobs_simple_format = logprobs_simple_format
        self.num_return_sequences = n
        self.streaming = streaming
        # Scaffolding: when the request reaches the executor's queue (in
        # iterations), where the stand-in model stops it, and how much of its
        # prompt the KV cache already holds.
        self.fake_arrive_iter = 0
        self.fake_stop_at: int | None = None
        self.fake_cached_prefix = 0
        self.fake_invalid = False


def executor_request_to_llm_request(req_id: int, executor_request: ExecutorRequest,
                                    child_req_ids: list[int]) -> LlmRequest:
    req = LlmRequest(
        num_logprobs=executor_request.py_num_logprobs,
        logprobs_simple_format=executor_request.py_logprobs_simple_format,
        request_id=req_id, max_new_tokens=executor_request.max_tokens,
        input_tokens=executor_request.input_token_ids,
        sampling_config=SamplingConfig(**executor_request.sampling),
        end_id=executor_request.end_id, client_id=executor_request.client_id,
        is_streaming=executor_request.streaming, return_log_probs=executor_request.return_log_probs)
    req.fake_stop_at = executor_request.fake_stop_at
    req.fake_cached_prefix = executor_request.fake_cached_prefix
    req.fake_invalid = executor_request.fake_invalid
    for child_id in child_req_ids:
        req.create_child_request(child_id)
    return req
