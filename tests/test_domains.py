"""Every domain pack (domains/<name>/pack.yaml) is complete, and a broken pack is a clear error.

Run: ``python -m pytest tests/test_domains.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import domains
from prompts import load_prompt_spec
from training import metrics as m
from training.config import load_config
from training.datagen.domain_settings import load_settings
from training.dialogs import SPLITS
from training.eval_data import PROBES_DIR, read_probe_file
from training.fact_drift import load_changes


@pytest.mark.parametrize("name", domains.names())
def test_every_pack_names_files_that_exist_and_parse(name: str) -> None:
    pack = domains.pack(name)
    assert load_prompt_spec(name).domain == name
    assert load_config(pack.file("training_config")).domain == name
    assert isinstance(yaml.safe_load(pack.file("phrase_bank").read_text()), dict)
    assert load_settings(name).config.domain == name
    assert all((pack.file("dialogs") / f"{split}.jsonl").is_file() for split in SPLITS)
    assert load_changes(name), "the fact-drift test needs at least one change"


@pytest.mark.parametrize("name", domains.names())
def test_every_pack_chooses_known_metrics_and_checks_over_its_own_probes(name: str) -> None:
    pack = domains.pack(name)
    sources = {probe.source for probe in pack.probes}
    for probe in pack.probes:
        rows = read_probe_file(PROBES_DIR / probe.file, probe.fields)
        assert any(row.get("domain", name) == name for row in rows), f"{probe.file} has no probe of {name}"
        assert set(probe.checks) <= set(m.CHECKS), probe.checks
        assert probe.group in probe.fields
    assert set(pack.metrics) <= set(m.METRICS)
    for spec in m.metrics_for(name):
        if spec.kind == "rate":
            assert spec.source in sources and spec.check in pack.probe(spec.source).checks, spec.key
    assert m.METRICS[pack.headline_metric].kind == "rate"
    assert all(re.compile(pattern) for pattern in pack.steer_back_patterns)


def test_the_packs_are_the_one_list_of_domains() -> None:
    from bots.registry import DOMAINS
    from prompts import available_domains
    from training import dialogs

    assert domains.names() == tuple(available_domains()) == DOMAINS == dialogs.DOMAINS == ("ecommerce", "medical")


def _write_pack(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "pack.yaml").write_text(text)
    return folder


def test_a_broken_pack_is_a_clear_error(tmp_path: Path) -> None:
    good = (domains.PACKS_DIR / "ecommerce" / "pack.yaml").read_text()
    cases = {
        "renamed": (good.replace("name: ecommerce", "name: shop"), "must be the folder's name"),
        "nofiles": (re.sub(r"  training_config: .*\n", "", good), "lacks training_config"),
        "headline": (good.replace("headline_metric: fact_accuracy", "headline_metric: escalation_first_rate"), "headline metric"),
        "bench": (good.replace("bench_probe_source: facts", "bench_probe_source: emergencies"), "bench_probe_source"),
        "yaml": ("name: [unclosed", "bad YAML"),
    }
    for label, (text, message) in cases.items():
        folder = _write_pack(tmp_path / label / "ecommerce", text)
        with pytest.raises(domains.PackError, match=message):
            domains.load_pack_from(folder)
    with pytest.raises(domains.PackError, match="no pack.yaml"):
        domains.load_pack_from(tmp_path)
    with pytest.raises(domains.PackError, match="known: ecommerce, medical"):
        domains.pack("garden")
