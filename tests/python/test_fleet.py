"""`toktrace fleet` (polars, embedded) and `toktrace.fleet` on DuckDB answer
the same fleet questions, over one dataset of real vLLM and SGLang traces
plus a trace written through the real probe on this machine (a second
host), row for row in order, floats within 1e-9 relative."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import toktrace.fleet as fleet
from conftest import run_cli
from test_dataset import DRIVER, FIXTURES

ASKED = [("worst_itl", {}), ("offenders", {}), ("worst_itl", {"limit": 3})] + [
    ("stalls", {"by": by}) for by in fleet.STALLS_BY]
FLAGS = {"worst_itl": "--worst-itl", "offenders": "--offenders", "stalls": "--stalls"}
AD_HOC = [
    "SELECT host, engine, count(*) AS steps, sum(decode_tokens) AS decode_tokens FROM steps "
    "GROUP BY host, engine ORDER BY host, engine",
    "SELECT capture_id, cause, count(*) AS delays, sum(delay_ms) AS delay_ms FROM interference "
    "GROUP BY capture_id, cause ORDER BY capture_id, cause",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fleet")
    local = tmp / "local"
    driver = [sys.executable, "-c", DRIVER, str(local), "600"]
    # Another host: the probe records the host name, so the driver runs in
    # its own UTS namespace named replica-b where that is allowed (root here).
    other = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname replica-b && exec "$@"', "sh", *driver],
                           capture_output=True, text=True, timeout=300)
    if other.returncode != 0:
        subprocess.run(driver, check=True, timeout=300)
    root = tmp / "fleet"
    traces = [FIXTURES / n / "trace" for n in ("vllm-mixed", "vllm-interference", "vllm-preempt",
                                               "sglang-mixed", "sglang-interference")]
    proc = run_cli("export", *map(str, traces), str(local), "--format", "parquet", "--dataset", str(root))
    assert proc.returncode == 0, proc.stderr
    return root


def by_toktrace(root: Path, *args: str) -> list[dict]:
    proc = run_cli("fleet", str(root), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def by_duckdb(root: Path, sql: str) -> list[dict]:
    con = duckdb.connect()
    fleet.duckdb_views(con, root)
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)  # JSON objects: keys in name order
        for k in x:
            if isinstance(x[k], float) or isinstance(y[k], float):
                assert x[k] is not None and y[k] is not None and math.isclose(x[k], y[k], rel_tol=1e-9), (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


@pytest.mark.parametrize(("name", "kw"), ASKED)
def test_named_questions_agree(dataset: Path, name: str, kw: dict) -> None:
    args = [FLAGS[name]]
    if "by" in kw:
        args += ["--by", kw["by"].replace("_", "-")]
    if "limit" in kw:
        args += ["--limit", str(kw["limit"])]
    ours = by_toktrace(dataset, *args)
    assert ours, "the question found nothing to compare"
    same(ours, by_duckdb(dataset, fleet.query(name, **kw)))
    # The SQL the CLI runs is the package's.
    shown = run_cli("fleet", str(dataset), *args, "--show-sql")
    assert shown.stdout.strip() == fleet.query(name, **kw).strip()


@pytest.mark.parametrize("sql", AD_HOC)
def test_ad_hoc_sql_agrees(dataset: Path, sql: str) -> None:
    same(by_toktrace(dataset, "--sql", sql), by_duckdb(dataset, sql))


def test_the_dataset_holds_two_hosts_and_both_engines(dataset: Path) -> None:
    rows = by_toktrace(dataset, "--sql", "SELECT DISTINCT host, engine FROM steps ORDER BY host, engine")
    hosts = {r["host"] for r in rows}
    if "replica-b" not in hosts:
        pytest.skip("no UTS namespace here (unshare --uts refused): one host only")
    assert len(hosts) == 2
    assert {r["engine"] for r in rows} >= {"vllm", "sglang", "synthetic"}


def test_days_narrow_the_answer(dataset: Path) -> None:
    day = by_toktrace(dataset, "--sql", "SELECT min(day) AS d FROM requests")[0]["d"]
    assert by_toktrace(dataset, "--stalls", "--by", "day", "--from", day, "--to", day)
    assert by_toktrace(dataset, "--stalls", "--by", "day", "--to", "1999-01-01") == []


def test_bad_questions_are_refused(dataset: Path, tmp_path: Path) -> None:
    none = run_cli("fleet", str(dataset))
    assert none.returncode == 2
    two = run_cli("fleet", str(dataset), "--worst-itl", "--offenders")
    assert two.returncode == 2
    bad_day = run_cli("fleet", str(dataset), "--worst-itl", "--from", "yesterday")
    assert bad_day.returncode == 2 and "YYYY-MM-DD" in bad_day.stderr
    not_dataset = run_cli("fleet", str(tmp_path), "--worst-itl")
    assert not_dataset.returncode == 1 and "not a toktrace dataset" in not_dataset.stderr
    bad_sql = run_cli("fleet", str(dataset), "--sql", "SELECT nope FROM requests")
    assert bad_sql.returncode == 1 and "nope" in bad_sql.stderr
    with pytest.raises(ValueError):
        fleet.query("worst_itl", from_day="1 Dec")
