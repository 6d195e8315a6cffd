"""Pseudonymising NHS numbers (check, type, HMAC; and with the vault's envelope encryption) beside the bare HMAC."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks.pipeline import extracts_by_feed, median_seconds


def bench_pseudonymisation(landing: Path, repeats: int, quiet: bool = False) -> dict:
    """The platform's pseudonymisation of the register's NHS numbers (five times over) beside the bare HMAC of
    the same digits; prints the medians of `repeats` and returns them (seconds and numbers per second)."""
    import hashlib
    import hmac

    from pophealth.contract.identifiers import NhsNumber, check_nhs_number, normalise_nhs_number
    from pophealth.identity.keys import LinkageKey, VaultPrivateKey
    from pophealth.identity.pseudonymise import Pseudonymiser
    from pophealth.identity.vault import VaultSealer

    extract = next(Path(landing).glob("gp_register_*.csv"))
    with extract.open(newline="") as handle:
        raw = [row["nhs_number"] for row in csv.DictReader(handle)]
    numbers = [n for n in raw if check_nhs_number(n).linkable] * 5
    digits = [normalise_nhs_number(n).encode() for n in numbers]
    secret = bytes.fromhex("ab" * 32)
    pseudonymiser = Pseudonymiser(LinkageKey(secret))
    cipher = VaultSealer(VaultPrivateKey(bytes.fromhex("cd" * 32)).public_key())
    data_key = cipher.new_data_key(0)[0]  # as a load does: one per file, sealed once to the public key

    def bare_hmac():
        for d in digits:
            hmac.new(secret, d, hashlib.sha256).hexdigest()

    def platform():
        for n in numbers:
            pseudonymiser.person_id(NhsNumber(n))

    def platform_with_vault():
        for n in numbers:
            number = NhsNumber(n)
            person = pseudonymiser.person_id(number)
            data_key.encrypt("nhs", person.value, number.digits_for_hashing())

    count = len(numbers)
    baseline = median_seconds(bare_hmac, repeats)
    figures = {"numbers": count, "repeats": repeats, "bare_hmac_s": baseline, "bare_hmac_per_s": count / baseline}
    if not quiet:
        print(
            f"{'baseline   bare HMAC-SHA256 of ' + format(count, ',') + ' NHS numbers':<52}{baseline:8.3f} s  "
            f"({count / baseline:10,.0f} /s)"
        )
    for key, label, action in (
        ("pseudonymise", "pseudonymise   check, type, HMAC", platform),
        ("pseudonymise_and_vault", "pseudonymise   + vault AES-256-GCM under the file's data key", platform_with_vault),
    ):
        seconds = median_seconds(action, repeats)
        figures[f"{key}_s"] = seconds
        figures[f"{key}_per_s"] = count / seconds
        figures[f"{key}_ratio_to_hmac"] = seconds / baseline
        if not quiet:
            print(
                f"{label:<52}{seconds:8.3f} s  ({count / seconds:10,.0f} /s)  ratio to bare HMAC: "
                f"{seconds / baseline:5.1f}x"
            )
    return figures


def bench_floor(landing: Path) -> dict:
    """The least any loader that pseudonymises row by row in Python must do, on the personal feeds' files: read
    each row (the csv module, in C), the keyed hash of each identifier it holds (NHS number, local ids) and its
    vault entry sealed under a file's data key (AES-256-GCM, a fresh nonce), with the product's primitives. No
    check of any value, no quarantine, no type, no write. Seconds and rows per feed, for the scale benchmark to
    set beside a bare COPY of the same rows: what is left of the gap once Python's least is paid."""
    import time

    from pophealth.contract.feeds import FEEDS_BY_NAME, PERSONAL_FEEDS
    from pophealth.identity.keys import LinkageKey, VaultPrivateKey
    from pophealth.identity.pseudonymise import Pseudonymiser
    from pophealth.identity.vault import VaultSealer

    by_feed = extracts_by_feed(landing)  # named once, outside the timing
    pseudonymiser = Pseudonymiser(LinkageKey(bytes.fromhex("ab" * 32)))
    cipher = VaultSealer(VaultPrivateKey(bytes.fromhex("cd" * 32)).public_key())
    figures: dict[str, dict] = {}
    for feed in PERSONAL_FEEDS:
        declared = FEEDS_BY_NAME[feed]
        wanted = ("nhs_number", *(local.column for local in declared.local_ids))
        rows = identities = 0
        started = time.perf_counter()
        for path in by_feed.get(feed, []):
            data_key = cipher.new_data_key(0)[0]  # one per file, as a load makes
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.reader(handle)
                header = [c.strip().lower() for c in next(reader)]
                at = [header.index(c) for c in wanted if c in header]
                for row in reader:
                    rows += 1
                    for i in at:
                        clear = row[i].encode()
                        if clear:
                            # Pseudonymiser.local is the product's HMAC (a copy of the keyed state, the value fed)
                            pseudonym = pseudonymiser.local("S", row[i]).value
                            data_key.encrypt("local", pseudonym, clear)
                            identities += 1
        seconds = time.perf_counter() - started
        figures[feed] = {"rows": rows, "identities": identities, "seconds": seconds, "rows_per_s": rows / seconds}
    return figures
