"""Teacher-soft-target distillation: teachers (runs, exports, score tables) whose per-window
scores become training targets for a student (issue 11).

- :mod:`birdnet_tf.distill.table` — :class:`TeacherTable`, per-window teacher scores mapped
  onto a student's labels (the contract between the table readers and training).
- :mod:`birdnet_tf.distill.tables` — :func:`read_teacher_table` (BirdNET-Analyzer CSV, Raven
  selection tables, birdnet-tf window CSVs; thresholded tables detected),
  :func:`match_table_files` (recordings → table files), :func:`pool_windows` (an excerpt's
  target from the windows it overlaps).
- :mod:`birdnet_tf.distill.names` — :class:`SpeciesMatcher`, teacher species names onto labels.
- :mod:`birdnet_tf.distill.birdnet_teacher` — ``birdnet-tf teacher birdnet``: BirdNET V2.4's
  complete window table of a dataset, run in its own environment by
  :mod:`birdnet_tf.distill.birdnet_worker` (a script for ``.venv-birdnet``, never imported).
"""
