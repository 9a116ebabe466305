"""The example configs carry the real stands' values, for test and production alike.

Each example sets one stand and gives the other in comments (``# key: value`` lines). The
table below holds what the providers' own documents say (MOEX's NTB guide, MOEX's Passport
and client-registration guides, KISC's API-portal guide; MPT's guide names no host, so its
bases are from public client code, as the example says). For each key, the values found in
the file, live or commented, must be exactly the table's: an example cannot drift from the
documents, nor lose a stand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "config"

MOEX_SSO = "/auth/realms/SSO/protocol/openid-connect/token"

# file -> upstream -> key -> every value the documents give (test and production).
SEEDS: dict[str, dict[str, Any]] = {
    "moex-ntb.yaml": {
        "upstream": "moex-ntb",
        "keys": {
            "match": {("api.moex.com",)},
            "target": {"https://api.moex.com"},
            "token_url": {f"https://sso.moex.com{MOEX_SSO}", f"https://sso2.beta.moex.com{MOEX_SSO}"},
            "client_id": {"LK_NTB_PUBLIC", "direct_access"},
            "scope": {"openid email profile"},
        },
        "text": ["https://api.moex.com/ntb/", "api-portal.beta.moex.com"],
    },
    "moex-passport.yaml": {
        "upstream": "moex-registration",
        "keys": {
            # The test API host: play-apim.moex.com in the API section, play-apim.beta.moex.com
            # in the connectivity list (a conflict in MOEX's documents); apim.moex.com in prod.
            "match": {("play-apim.moex.com",), ("play-apim.beta.moex.com",), ("apim.moex.com",)},
            "target": {
                "https://play-apim.moex.com",
                "https://play-apim.beta.moex.com",
                "https://apim.moex.com",
            },
            "passport_url": {
                "https://passport-test.moex.com/authenticate",
                "https://passport.moex.com/authenticate",
            },
            "token_url": {f"https://sso2.beta.moex.com{MOEX_SSO}", f"https://sso.moex.com{MOEX_SSO}"},
            "scope": {"client_registration"},
            "max_body": {1048576},
        },
        "text": [
            "/client/v1/applications/",
            "{DOC_DATE}/{DOC_NUM}",
            "passport.moex.com, sso.moex.com, apim.moex.com",
            "passport-test.moex.com, sso2.beta.moex.com, play-apim.beta.moex.com",
            "conflict",
        ],
    },
    "kisc.yaml": {
        "upstream": "kisc",
        "keys": {
            "match": {("ax.kisc.kz",), ("online.kisc.kz",)},
            "target": {"https://ax.kisc.kz:8243", "https://online.kisc.kz:8243"},
            "token_url": {"https://ax.kisc.kz:8243/token", "https://online.kisc.kz:8243/token"},
            "scope": {"default"},
        },
        "text": [
            "/etsfo/1.0.0/messages/",
            "https://ax.kisc.kz:9443/store",
            "https://online.kisc.kz:9443/store",
            "betaca.kisc.kz",
            "Боевые ключи",
            "Тестовые ключи",
            "without its system prefix",
        ],
    },
    "mpt.yaml": {
        "upstream": "mpt",
        "keys": {
            "match": {("stage.ismet.kz",), ("elk.prod.markirovka.ismet.kz",)},
            "target": {"https://stage.ismet.kz", "https://elk.prod.markirovka.ismet.kz"},
            "base_url": {
                "https://stage.ismet.kz/api/v3/true-api",
                "https://elk.prod.markirovka.ismet.kz/api/v3/true-api",
            },
        },
        "text": ["<url стенда>", "not from MPT"],
    },
}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def values_in_file(text: str, key: str) -> set[Any]:
    """Every value of ``key:`` on a line of its own, live or commented out."""
    found: set[Any] = set()
    for line in text.splitlines():
        match = re.match(rf"^\s*(?:#\s*)?({re.escape(key)}:\s.*)$", line)
        if match:
            found.add(_hashable(yaml.safe_load(match.group(1))[key]))
    return found


def live_values(data: dict[str, Any], upstream: str) -> dict[str, Any]:
    """The keys of the table in the upstream as YAML reads it (auth keys included)."""
    up = data["upstreams"][upstream]
    return {**{k: v for k, v in up.items() if k != "auth"}, **up.get("auth", {})}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_example_gives_every_stand_from_the_documents(name: str) -> None:
    seed = SEEDS[name]
    text = (CONFIG / name).read_text(encoding="utf-8")
    live = live_values(yaml.safe_load(text), seed["upstream"])
    for key, expected in seed["keys"].items():
        assert values_in_file(text, key) == expected, f"{name}: {key}"
        assert _hashable(live[key]) in expected, f"{name}: the live {key} is no stand's"
    for fragment in seed["text"]:
        assert fragment in text, f"{name} does not mention {fragment!r}"


def test_live_values_are_one_stand() -> None:
    """An example never mixes stands: its live hosts belong to the same one."""
    ntb = live_values(yaml.safe_load((CONFIG / "moex-ntb.yaml").read_text()), "moex-ntb")
    assert (ntb["token_url"], ntb["client_id"]) in {
        (f"https://sso.moex.com{MOEX_SSO}", "LK_NTB_PUBLIC"),
        (f"https://sso2.beta.moex.com{MOEX_SSO}", "direct_access"),
    }
    moex = live_values(
        yaml.safe_load((CONFIG / "moex-passport.yaml").read_text()), "moex-registration"
    )
    test_stand = "passport-test" in moex["passport_url"]
    assert test_stand == ("sso2.beta" in moex["token_url"])
    assert test_stand == (moex["target"] != "https://apim.moex.com")
    kisc = live_values(yaml.safe_load((CONFIG / "kisc.yaml").read_text()), "kisc")
    assert kisc["token_url"].startswith(kisc["target"] + "/")
    assert kisc["match"] == [kisc["target"].split("//")[1].split(":")[0]]


def test_kisc_host_alias_is_the_kubernetes_form() -> None:
    """The hosts entry KISC asks for (ax.kisc.kz -> 91.195.226.56), as a pod's hostAliases."""
    text = (CONFIG / "kisc.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "#   hostAliases:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[len("#   ") :])
    spec = yaml.safe_load("\n".join(block))
    assert spec == {"hostAliases": [{"ip": "91.195.226.56", "hostnames": ["ax.kisc.kz"]}]}
