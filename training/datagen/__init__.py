"""Generator of the training/validation/test dialog datasets in training/data/<domain>/.

``python -m training.datagen`` regenerates everything (seeded, byte-identical on rerun);
``--out DIR`` writes elsewhere, ``--domain`` limits it to one domain. Phrase banks:
``phrases/<domain>.yaml``; dialog engine: ``engine.py``; helpers: ``common.py``.
"""
