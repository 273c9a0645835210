"""Teachers: Hugging Face classifiers (fine-tuned here when needed), read online or through the store."""

from distill.teachers.finetune import finetune_teacher, finished_teacher, teacher_dir

__all__ = ["finetune_teacher", "finished_teacher", "teacher_dir"]
