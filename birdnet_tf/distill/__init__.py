"""Teacher-soft-target distillation: teachers (runs, exports, score tables) whose per-window
scores become training targets for a student (issue 11).

- :mod:`birdnet_tf.distill.table` — :class:`TeacherTable`, per-window teacher scores mapped
  onto a student's labels (the contract between the table readers and training).
"""
