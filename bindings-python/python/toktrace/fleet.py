"""Fleet questions on DuckDB or Spark, over a dataset written by `toktrace
export TRACE… --format parquet --dataset ROOT` (docs/fleet.md).

The named questions are the SQL files in ``toktrace/queries/`` — the same
text `toktrace fleet` runs with its embedded engine — in a subset of SQL
that polars, DuckDB and Spark SQL all run. Each runner registers the
dataset's tables as views named ``steps``, ``slices``, ``tokens``,
``requests`` and ``interference``, with ``day`` and ``host`` (from the Hive
paths) as text, and files of older schema versions merged by column name.

    import duckdb, toktrace.fleet as fleet
    con = duckdb.connect()
    fleet.duckdb_views(con, "/shared/fleet")
    con.execute(fleet.query("worst_itl", from_day="2026-12-01")).fetchall()

Neither DuckDB nor PySpark is a dependency of toktrace: install the one you use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

QUERIES = Path(__file__).resolve().parent / "queries"
TABLES = ("steps", "slices", "tokens", "requests", "interference")
NAMED = ("worst_itl", "offenders", "stalls")
STALLS_BY = ("model", "engine_version", "host", "day")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def query(name: str, *, from_day: str | None = None, to_day: str | None = None, limit: int = 20,
          by: str = "model") -> str:
    """The SQL of a named question, its placeholders filled."""
    if name not in NAMED:
        raise ValueError(f"no fleet question {name!r}; there are {', '.join(NAMED)}")
    if by not in STALLS_BY:
        raise ValueError(f"--by takes {', '.join(STALLS_BY)}, not {by!r}")
    for day in (from_day, to_day):
        if day is not None and not _DAY.fullmatch(day):
            raise ValueError(f"a day is YYYY-MM-DD, not {day!r}")
    if limit < 0:
        raise ValueError("limit must be >= 0")
    text = (QUERIES / f"{name}.sql").read_text()
    return (text.replace("${from}", from_day or "0000-01-01").replace("${to}", to_day or "9999-12-31")
            .replace("${limit}", str(int(limit))).replace("${by}", by))


def _tables(root: str | Path) -> list[tuple[str, Path]]:
    root = Path(root)
    if not (root / "_toktrace" / "dataset.json").is_file():
        raise FileNotFoundError(f"{root}: not a toktrace dataset (no _toktrace/dataset.json)")
    return [(t, root / t) for t in TABLES if (root / t).is_dir()]


def duckdb_views(con: Any, root: str | Path) -> None:
    """Register the dataset's tables as views on a DuckDB connection."""
    for name, path in _tables(root):
        glob = str(path / "**" / "*.parquet").replace("'", "''")
        con.execute(
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true, "
            f"union_by_name = true, hive_types = {{'day': VARCHAR, 'host': VARCHAR}})")


def spark_views(spark: Any, root: str | Path) -> None:
    """Register the dataset's tables as temporary views in a Spark session
    (partition values kept as text, schemas merged by name)."""
    spark.conf.set("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
    for name, path in _tables(root):
        frame = spark.read.option("mergeSchema", "true").parquet(str(path))
        frame.createOrReplaceTempView(name)
