"""Teachers: Hugging Face classifiers (fine-tuned here when needed), read online or through the store, and
black-box teachers that can only be queried (``distill.teachers.blackbox``)."""

__all__ = ["finetune_teacher", "finished_teacher", "teacher_dir"]


def __getattr__(name):  # the fine-tune path imports transformers' Trainer: load it only when used
    if name in __all__:
        from distill.teachers import finetune

        return getattr(finetune, name)
    raise AttributeError(name)
