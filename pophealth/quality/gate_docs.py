"""The index page of the gates' Data Docs site, listing every validation without deserialising each one.

Great Expectations' DefaultSiteIndexBuilder lists a validation on the index by loading its whole result through
the results store (marshmallow, then pydantic): every gate rebuilds the index, so every gate paid that for every
validation ever kept, a cost growing with the warehouse's history (more than the gate's own rules once a few
dozen files were loaded). The index needs four things of a result (success, batch kwargs, batch spec, asset
name); this builder reads them from the stored JSON itself and remembers them per result, which never changes
once written. Imported by Great Expectations from the site's configuration (pophealth.quality.validation._GX), only
then.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

from great_expectations.render.renderer.site_builder import (
    FALSEY_YAML_STRINGS,
    DefaultSiteIndexBuilder,
    resource_key_passes_run_name_filter,
)

log = logging.getLogger(__name__)

#: (results store's folder, result key) -> (success, batch_kwargs, batch_spec, asset_name), for this process.
_SEEN: dict[tuple, tuple] = {}


def _summary(text: str) -> tuple:
    data = json.loads(text)
    meta = data.get("meta") or {}
    batch_kwargs = meta.get("batch_kwargs") or {}
    batch_spec = meta.get("batch_spec") or {}
    # As great_expectations.render.renderer.site_builder._resolve_asset_name.
    asset_name = (
        batch_kwargs.get("data_asset_name")
        or batch_spec.get("data_asset_name")
        or (meta.get("active_batch_definition") or {}).get("data_asset_name")
    )
    return data.get("success"), batch_kwargs, batch_spec, asset_name


class ValidationIndexBuilder(DefaultSiteIndexBuilder):
    def _add_validations_to_index_links(self, index_links_dict: OrderedDict, site_keys: list) -> None:
        validations = self.site_section_builders_config.get("validations", "None")
        if not validations or validations in FALSEY_YAML_STRINGS:
            return
        name_filter = self.site_section_builders_config["validations"]["run_name_filter"]
        keys = sorted(
            (k for k in site_keys if resource_key_passes_run_name_filter(k, name_filter)),
            key=lambda k: k.run_id.run_time,
            reverse=True,
        )
        if self.validation_results_limit:
            keys = keys[: self.validation_results_limit]
        store = self.data_context.stores[
            self.source_stores.get("validations") or self.data_context.validation_results_store_name
        ]
        backend = store.store_backend
        where = getattr(backend, "full_base_directory", None) or id(backend)
        for key in keys:
            key_tuple = store.key_to_tuple(key)
            seen = (where, key_tuple)
            if seen not in _SEEN:
                try:
                    text = backend.get(key_tuple)
                    _SEEN[seen] = _summary(text)
                except Exception:  # noqa: BLE001 - as Great Expectations: a result it cannot read is left off
                    log.warning("Validation result not found: %s - skipping", key.to_tuple())
                    continue
            success, batch_kwargs, batch_spec, asset_name = _SEEN[seen]
            self.add_resource_info_to_index_links_dict(
                index_links_dict=index_links_dict,
                expectation_suite_name=key.expectation_suite_identifier.name,
                section_name="validations",
                batch_identifier=key.batch_identifier,
                run_id=key.run_id,
                validation_success=success,
                run_time=key.run_id.run_time,
                run_name=key.run_id.run_name,
                asset_name=asset_name,
                batch_kwargs=batch_kwargs,
                batch_spec=batch_spec,
            )
