"""A third domain, ``garden``, made only of files, for tests that show a domain needs no code.

    with garden_domain(tmp_path) as garden: ...   # domains.names() includes "garden" inside
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import domains
import prompts.loader as loader


@contextmanager
def garden_domain(tmp_path: Path) -> Iterator[Path]:
    """Packs read from a folder holding copies of the shipped packs and a ``garden`` pack whose
    prompt file, retrieval pool and generator settings are the e-commerce ones renamed (its
    phrase bank, configuration and probes are e-commerce's own). Yields the garden folder; the
    shipped packs are read again afterwards."""
    packs = tmp_path / "packs"
    repo = f"{domains.PACKS_DIR.parent}/"
    for name in domains.names():
        (packs / name).mkdir(parents=True)
        (packs / name / "pack.yaml").write_text((domains.PACKS_DIR / name / "pack.yaml").read_text().replace("../../", repo))
    shipped = domains.pack("ecommerce")
    garden = packs / "garden"
    garden.mkdir()
    source = shipped.file("prompt").read_text()
    (garden / "prompt.yaml").write_text(source.replace("domain: ecommerce", "domain: garden").replace("label: E-commerce", "label: Garden"))
    (garden / "retrieval").mkdir()  # the prompt file's retrieval pool: retrieval/<domain>.yaml beside it
    (garden / "retrieval" / "garden.yaml").write_text((loader.RETRIEVAL_DIR / "ecommerce.yaml").read_text())
    (garden / "datagen.yaml").write_text(shipped.file("datagen").read_text().replace("(ecommerce)", "(garden)"))
    pack = (domains.PACKS_DIR / "ecommerce" / "pack.yaml").read_text().replace("name: ecommerce", "name: garden")
    pack = pack.replace("../../prompts/ecommerce.yaml", "prompt.yaml").replace("../../training/datagen/settings/ecommerce.yaml", "datagen.yaml")
    (garden / "pack.yaml").write_text(pack.replace("../../", repo))
    with mock.patch.object(domains, "PACKS_DIR", packs):
        domains.reload()
        loader.load_prompt_spec.cache_clear()
        try:
            yield garden
        finally:
            domains.reload()
            loader.load_prompt_spec.cache_clear()  # read afresh, from the shipped packs, after the patch ends
