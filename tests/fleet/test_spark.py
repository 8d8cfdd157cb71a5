"""Tier 2: Spark SQL (PySpark, local mode) answers the fleet questions as
`toktrace fleet` (polars) does, over one dataset of real vLLM and SGLang
traces: the same SQL files, the tables registered by `toktrace.fleet.spark_views`
(schemas merged, `day` and `host` as text), rows equal in order, floats
within 1e-9 relative. Run by `scripts/extended.sh fleet-spark`."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import toktrace.fleet as fleet

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "traces"
QUESTIONS = [("worst_itl", {}, ["--worst-itl"]), ("offenders", {}, ["--offenders"])] + [
    ("stalls", {"by": by}, ["--stalls", "--by", by.replace("_", "-")]) for by in fleet.STALLS_BY]
AD_HOC = [
    "SELECT host, engine, count(*) AS steps, sum(decode_tokens) AS decode_tokens FROM steps "
    "GROUP BY host, engine ORDER BY host, engine",
    "SELECT capture_id, cause, count(*) AS delays, sum(delay_ms) AS delay_ms FROM interference "
    "GROUP BY capture_id, cause ORDER BY capture_id, cause",
]


def toktrace_cli() -> str:
    exe = Path(sys.executable).parent / "toktrace"
    return str(exe) if exe.exists() else str(shutil.which("toktrace"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "fleet"
    traces = [str(FIXTURES / n / "trace") for n in ("vllm-mixed", "vllm-interference", "vllm-preempt",
                                                    "sglang-mixed", "sglang-interference", "sglang-retract")]
    subprocess.run([toktrace_cli(), "export", *traces, "--format", "parquet", "--dataset", str(root)],
                   check=True, timeout=600)
    return root


@pytest.fixture(scope="module")
def spark(dataset: Path):
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("toktrace-fleet")
               .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC").getOrCreate())
    fleet.spark_views(session, dataset)
    yield session
    session.stop()


def by_toktrace(root: Path, *args: str) -> list[dict]:
    proc = subprocess.run([toktrace_cli(), "fleet", str(root), *args, "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def by_spark(spark, sql: str) -> list[dict]:
    return [row.asDict() for row in spark.sql(sql).collect()]


def same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            if isinstance(x[k], float) or isinstance(y[k], float):
                assert x[k] is not None and y[k] is not None and math.isclose(x[k], y[k], rel_tol=1e-9), (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


@pytest.mark.parametrize(("name", "kw", "flags"), QUESTIONS, ids=[f"{q[0]}-{q[1].get('by', '')}" for q in QUESTIONS])
def test_named_questions_agree(dataset: Path, spark, name: str, kw: dict, flags: list[str]) -> None:
    ours = by_toktrace(dataset, *flags)
    assert ours
    same(ours, by_spark(spark, fleet.query(name, **kw)))


@pytest.mark.parametrize("sql", AD_HOC)
def test_ad_hoc_sql_agrees(dataset: Path, spark, sql: str) -> None:
    same(by_toktrace(dataset, "--sql", sql), by_spark(spark, sql))
