"""Issue 17's reliability battery: one or more regression tests per item, each named
``test_itemN_...`` and each failing on the tree before the fix.

==========================  =================================================================
file                        items
==========================  =================================================================
``test_files.py``           1 run directories, 2 outputs over inputs, 3 special files,
                            4 stale temporaries, 8c/9 prune resume, 11 outputs checked before
                            work, 15 interrupts during a save
``test_manifests.py``       5 manifests, 8b transcribe under torchrun, 16b progress,
                            17 transcribe output escaping / ``--format jsonl``
``test_checkpoints.py``     7b non-finite weights, 13 checkpoint records, 14 Hugging Face
                            directories, 16c memory estimate, 20a-c/g-i messages
``test_options.py``         7a/7c hyperparameters and loss weights, 10 ``--wer-budget``,
                            12 ranges, 18 inapplicable flags, 19 usage errors, 20d-f messages
``test_profile.py``         6 ``profile --models``, 8a plot formats, 16a thresholds cap,
                            20j help markup, 21 demo defaults
``test_probes_*.py``        defects found by a second round of probes (not in the issue)
==========================  =================================================================
"""
