"""Pseudonyms by purpose: each purpose's id is the transit pseudonym keyed again under that purpose's key.

The rule, worked by hand for one transit pseudonym, then as a property over many: the id is
HMAC-SHA256(purpose key, "pophealth|<purpose>|" + transit), lowercase hex; the two purposes never give the
same id; an id is not the transit pseudonym; the keys fail closed and never show themselves.
"""

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pophealth.identity.keys import DirectCareKey, KeyError_, SecondaryUseKey, load_purpose_key
from pophealth.identity.purposes import PURPOSES, PublishedIdsRefused, PurposeKeyring, rebuilds_indexes

SECONDARY = "e7" * 32
DIRECT = "d4" * 32
TRANSIT = hashlib.sha256(b"a transit pseudonym for the test").hexdigest()


def keyring(secondary: str = SECONDARY, direct: str = DIRECT) -> PurposeKeyring:
    return PurposeKeyring(
        {
            "secondary_use": SecondaryUseKey.from_hex(secondary, "test"),
            "direct_care": DirectCareKey.from_hex(direct, "test"),
        }
    )


@given(st.text(alphabet="0123456789abcdef", min_size=1, max_size=80))
def test_hashes_is_id_for_of_one_purpose(transit):
    ring = keyring()
    for purpose in PURPOSES:
        assert ring.hashes(purpose)(transit) == ring.id_for(purpose, transit)


@pytest.mark.parametrize(
    ("new", "mapped", "built_again"),
    [
        (0, 0, False),  # nothing new: nothing to insert
        (1, 0, True),  # the first build: everything is new
        (2_044_154, 0, True),  # Essex's first build
        (34, 100, True),  # a third or more of those mapped
        (33, 100, False),
        (103_546, 1_940_608, False),  # a month's new people and spells at Essex: the indexes are kept up
    ],
)
def test_the_mapping_s_indexes_are_built_again_from_a_third_of_those_mapped_new(new, mapped, built_again):
    assert rebuilds_indexes(new, mapped) is built_again


def test_an_id_is_the_transit_pseudonym_keyed_under_its_purpose_key():
    by_hand = hmac.new(
        bytes.fromhex(SECONDARY), b"pophealth|secondary_use|" + TRANSIT.encode(), hashlib.sha256
    ).hexdigest()
    assert keyring().id_for("secondary_use", TRANSIT) == by_hand
    by_hand = hmac.new(bytes.fromhex(DIRECT), b"pophealth|direct_care|" + TRANSIT.encode(), hashlib.sha256).hexdigest()
    assert keyring().id_for("direct_care", TRANSIT) == by_hand


transits = st.binary(min_size=32, max_size=32).map(lambda b: b.hex())


@given(transits)
def test_the_two_purposes_never_give_a_person_the_same_id_nor_the_transit_pseudonym(transit):
    ring = keyring()
    secondary, direct = ring.id_for("secondary_use", transit), ring.id_for("direct_care", transit)
    assert len({secondary, direct, transit}) == 3
    assert ring.id_for("secondary_use", transit) == secondary  # stable while the key is


@given(transits)
def test_the_same_key_for_both_purposes_still_gives_two_ids(transit):
    # The purpose is part of what is hashed: a custodian who reused one key would not merge the two purposes.
    ring = keyring(secondary="5f" * 32, direct="5f" * 32)
    assert ring.id_for("secondary_use", transit) != ring.id_for("direct_care", transit)


@given(transits, st.sampled_from(PURPOSES))
def test_another_key_gives_another_id(transit, purpose):
    assert keyring().id_for(purpose, transit) != keyring("01" * 32, "02" * 32).id_for(purpose, transit)


@pytest.mark.parametrize(
    "purpose, variable",
    [("secondary_use", "POPHEALTH_SECONDARY_USE_KEY"), ("direct_care", "POPHEALTH_DIRECT_CARE_KEY")],
)
def test_no_purpose_key_fails_closed_naming_where_to_put_it(monkeypatch, purpose, variable):
    for name in (
        "POPHEALTH_SECONDARY_USE_KEY",
        "POPHEALTH_DIRECT_CARE_KEY",
        "POPHEALTH_SECONDARY_USE_KEY_FILE",
        "POPHEALTH_DIRECT_CARE_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(KeyError_, match=variable):
        load_purpose_key(purpose)
    with pytest.raises(PublishedIdsRefused, match="the marts are not built"):
        PurposeKeyring.load()


def test_the_keyring_and_its_keys_never_show_a_key():
    ring = keyring()
    key = SecondaryUseKey.from_hex(SECONDARY, "test")
    for text in (repr(ring), str(ring), repr(key), f"{key}"):
        assert SECONDARY not in text and DIRECT not in text
    assert key.version.startswith("s-") and DirectCareKey.from_hex(DIRECT, "test").version.startswith("d-")
