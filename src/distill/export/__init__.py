"""Export: the student with its tokenizer, a model card, optionally ONNX."""

from distill.export.model_card import render_model_card, write_model_card
from distill.export.onnx import export_onnx
from distill.export.save import save_student

__all__ = ["save_student", "export_onnx", "render_model_card", "write_model_card"]
