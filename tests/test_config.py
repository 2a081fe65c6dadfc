from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_actor.config import SETTINGS_DOC, Settings
from bitnet_actor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_from_env_reads_prefixed_variables() -> None:
    settings = Settings.from_env(
        {
            "BITNET_PORT": "9001",
            "BITNET_DATA_DIR": "/srv/b",
            "BITNET_SHUTDOWN_GRACE": "2.5",
            "OTHER": "x",
            "BITNET_REDIS_URL": "",
        }
    )
    assert (settings.port, settings.data_dir, settings.shutdown_grace) == (9001, Path("/srv/b"), 2.5)
    assert settings.redis_url == ""  # empty means unset: the embedded default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BITNET_PORT": "x"}, "BITNET_PORT='x' is not a valid int"),
        ({"BITNET_PORT": "70000"}, "between 0 and 65535"),
        ({"BITNET_SHUTDOWN_GRACE": "-1"}, "SHUTDOWN_GRACE must be >= 0"),
        ({"BITNET_DATABASE_URL": "mysql://x"}, "postgresql://"),
        ({"BITNET_REDIS_URL": "http://x"}, "redis://"),
        ({"BITNET_S3_ENDPOINT": "http://s3"}, "BITNET_S3_BUCKET is required"),
        ({"BITNET_S3_BUCKET": "b"}, "ACCESS_KEY_ID and BITNET_S3_SECRET_ACCESS_KEY are required"),
        ({"BITNET_LOG_LEVEL": "loud"}, "BITNET_LOG_LEVEL"),
        ({"BITNET_OUTPUT_LAYER": "q4"}, "BITNET_OUTPUT_LAYER must be exact, q8 or q6, not 'q4'"),
        ({"BITNET_PREFIX_CACHE_SCOPE": "tenant"}, "BITNET_PREFIX_CACHE_SCOPE must be org, platform or off"),
        ({"BITNET_PREFIX_CACHE_MEMORY": "lots"}, "BITNET_PREFIX_CACHE_MEMORY='lots' is not a size"),
        ({"BITNET_PREFIX_CACHE_MEMORY": "-1M"}, "BITNET_PREFIX_CACHE_MEMORY must be 0 or more"),
        ({"BITNET_MODEL_MEMORY": "0"}, "BITNET_MODEL_MEMORY must be positive"),
        ({"BITNET_OUTPUT_LAYER": "q6", "BITNET_DEVICE": "opencl"}, "q6 runs on the CPU only"),
        ({"BITNET_MASTER_KEYS": "nocolon"}, "entries must be ID:BASE64URL-KEY"),
        ({"BITNET_MASTER_KEYS": "k1:c2hvcnQ"}, "key 'k1' must be 32 bytes"),
        ({"BITNET_MASTER_KEYS": f"a:{'A' * 43},a:{'B' * 43}"}, "key id 'a' is given twice"),
        ({"BITNET_MASTER_KEYS": " , "}, "names no key"),
        ({"BITNET_REGION": "EU West"}, "BITNET_REGION must be"),
        ({"BITNET_REGION_URLS": "eu"}, "entries must be REGION=http"),
        ({"BITNET_REGION_URLS": "eu=ftp://x"}, "entries must be REGION=http"),
        ({"BITNET_REGION_URLS": "eu=http://a,eu=http://b"}, "region 'eu' is given twice"),
        ({"BITNET_REGION_STORES": "eu"}, "entries must be REGION=s3://BUCKET"),
        ({"BITNET_REGION_STORES": "EU=file:///x"}, "entries must be REGION=s3://BUCKET"),
        ({"BITNET_REGION_STORES": "eu=https://s3.example/b"}, "entries must be REGION=s3://BUCKET"),
        ({"BITNET_REGION_STORES": "eu=file://relative/path"}, "needs an absolute path"),
        ({"BITNET_REGION_STORES": "eu=file:///"}, "needs an absolute path"),
        ({"BITNET_REGION_STORES": "eu=s3://"}, "needs a bucket name"),
        ({"BITNET_REGION_STORES": "eu=s3://Bad_Bucket/p"}, "needs a bucket name"),
        ({"BITNET_REGION_STORES": "eu=file:///a,eu=file:///b"}, "region 'eu' is given twice"),
        ({"BITNET_REGION_STORES": "eu=s3://models-eu"}, "are required with s3:// stores in BITNET_REGION_STORES"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env).validated()


def test_master_keys_parse_in_order() -> None:
    from bitnet_actor.config import parse_master_keys

    raw = f"new:{'_' * 42}w, old:{'A' * 43}="
    assert parse_master_keys(raw) == [("new", b"\xff" * 31 + b"\xfc"), ("old", bytes(32))]
    assert Settings.from_env({"BITNET_MASTER_KEYS": raw}).validated().master_keys == raw


def test_regions_parse() -> None:
    from bitnet_actor.config import parse_region_urls

    settings = Settings.from_env({"BITNET_REGION": "eu", "BITNET_REGION_URLS": "eu=https://eu.x/, us=http://us.x"})
    assert settings.validated().region == "eu"
    assert parse_region_urls(settings.region_urls) == {"eu": "https://eu.x", "us": "http://us.x"}
    assert Settings().region == "default"


def test_region_stores_parse() -> None:
    from bitnet_actor.config import parse_region_stores

    raw = " eu = s3://models-eu/prod/ , us=file:///srv/objects-us/, ap=s3://models-ap"
    assert parse_region_stores(raw) == {
        "eu": "s3://models-eu/prod",
        "us": "file:///srv/objects-us",
        "ap": "s3://models-ap",
    }
    assert parse_region_stores("") == {}
    keys = {"BITNET_S3_ACCESS_KEY_ID": "a", "BITNET_S3_SECRET_ACCESS_KEY": "b", "BITNET_S3_ENDPOINT": "http://s3"}
    # S3 credentials without a default bucket are fine when a region's store is on S3
    assert Settings.from_env({**keys, "BITNET_REGION_STORES": raw}).validated().region_stores == raw


def test_every_field_is_documented() -> None:
    from dataclasses import fields

    documented = {name.removeprefix("BITNET_").lower() for name in SETTINGS_DOC}
    assert documented == {f.name for f in fields(Settings)}


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for env, (flag, _, _) in SETTINGS_DOC.items():
        assert f"| `{env}` | `{flag}` |" in readme, f"README's configuration table lacks {env}"


def test_security_doc_has_the_role_table() -> None:
    from bitnet_actor.services.permissions import PERMISSIONS, ROLE_PERMISSIONS, ROLES

    doc = (ROOT / "docs" / "security.md").read_text()
    for permission in PERMISSIONS:
        marks = " | ".join("x" if permission in ROLE_PERMISSIONS[r] else "" for r in ROLES)
        assert f"| `{permission}` | {marks} |" in doc, f"docs/security.md's role table is stale for {permission}"


def test_prefix_cache_settings() -> None:
    from bitnet_actor.config import parse_size

    default = Settings().validated()
    assert (default.prefix_cache_scope, parse_size(default.prefix_cache_memory)) == ("org", 2**30)
    env = {"BITNET_PREFIX_CACHE_SCOPE": "platform", "BITNET_PREFIX_CACHE_MEMORY": "0"}
    settings = Settings.from_env(env).validated()
    assert settings.prefix_cache_scope == "platform"
    assert parse_size(settings.prefix_cache_memory, "BITNET_PREFIX_CACHE_MEMORY", zero=True) == 0
