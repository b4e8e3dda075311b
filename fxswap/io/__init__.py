"""Shipping a student: the self-describing saved file (:mod:`.student`) and exports to ``.pt2``/ONNX
(:mod:`.export`)."""
from .export import ExportResult, export
from .student import load_student, read_record, save_student

__all__ = ["save_student", "load_student", "read_record", "export", "ExportResult"]
