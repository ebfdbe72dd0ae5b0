"""Generator of the training/validation/test dialog datasets in training/data/<domain>/.

``python -m training.datagen`` regenerates everything (seeded, byte-identical on rerun);
``--out DIR`` writes elsewhere, ``--domain`` limits it to one domain. Phrase banks:
``phrases/<domain>.yaml``; split sizes, topic mix and card notes: ``settings/<domain>.yaml``
(both named by the domain's pack, read by ``domain_settings.py``); dialog engine: ``engine.py``; helpers: ``common.py``.
"""
