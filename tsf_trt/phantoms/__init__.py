"""Phantom subjects with ground truth (:mod:`.generator`), from the MNI152 anatomy in ``anatomy/``.

A package of its own, not part of training: `tsf-trt phantom`, `tsf-trt demo`,
`tsf-trt bench` and the tests make phantoms, and none of them should import the trainer
to do so, nor torch (an optional extra): numpy and scipy are enough. ``make_anatomy.py``
rebuilt ``anatomy/`` once, outside the project's venv.
"""

from tsf_trt.phantoms.generator import (SEQUENCES, TISSUES, Phantom, check_targets, is_hard, make_subject,
                                        subject_name, write_subject, write_subjects)

__all__ = ["SEQUENCES", "TISSUES", "Phantom", "check_targets", "is_hard", "make_subject", "subject_name",
           "write_subject", "write_subjects"]
