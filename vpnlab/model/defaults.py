"""Azure defaults and limits, loaded once from defaults.yaml beside this file."""
from functools import lru_cache
from pathlib import Path

import yaml


@lru_cache(maxsize=1)
def defaults() -> dict:
    return yaml.safe_load((Path(__file__).with_name("defaults.yaml")).read_text())


def reserved_site_asn(asn: int) -> bool:
    for entry in defaults()["azure"]["reserved_site_asns"]:
        low, high = entry if isinstance(entry, list) else (entry, entry)
        if low <= asn <= high:
            return True
    return False


def reserved_site_asn_text() -> str:
    parts = []
    for entry in defaults()["azure"]["reserved_site_asns"]:
        parts.append(f"{entry[0]}-{entry[1]}" if isinstance(entry, list) else str(entry))
    return ", ".join(parts)
