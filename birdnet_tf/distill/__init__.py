"""Teacher-soft-target distillation: teachers (runs, exports, score tables) whose per-window
scores become training targets for a student (issue 11).

- :mod:`birdnet_tf.distill.table` — :class:`TeacherTable`, per-window teacher scores mapped
  onto a student's labels (the contract between the table readers and training).
- :mod:`birdnet_tf.distill.tables` — :func:`read_teacher_table` (BirdNET-Analyzer CSV, Raven
  selection tables, birdnet-tf window CSVs; thresholded tables detected).
- :mod:`birdnet_tf.distill.names` — :class:`SpeciesMatcher`, teacher species names onto labels.
- :mod:`birdnet_tf.distill.birdnet_teacher` — ``birdnet-tf teacher birdnet``: BirdNET V2.4's
  complete window table of a dataset, run in its own environment by
  :mod:`birdnet_tf.distill.birdnet_worker` (a script for ``.venv-birdnet``, never imported).
- :mod:`birdnet_tf.distill.targets` — tables matched to training files and pooled into
  per-excerpt targets inside ``tf.data``.
- :mod:`birdnet_tf.distill.teachers` — model teachers (runs, exports; resampled to their rate),
  the masked soft target, the loss and the ``Distiller`` that trains a student on them.
- :mod:`birdnet_tf.distill.setup` — the ``distill`` config section: teachers resolved, checked, loaded.
- :mod:`birdnet_tf.distill.generations` — born-again generations (``birdnet-tf distill``).
- :mod:`birdnet_tf.distill.pseudo` — unlabelled recordings for pseudo-labels.
- :mod:`birdnet_tf.distill.agreement` — the student's agreement with its teachers (``evaluate``).
"""
