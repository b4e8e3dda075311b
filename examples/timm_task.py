"""fxswap's AT, hint and SRRL terms inside timm's own training, through ``fxswap.Distiller``; timm unedited.

timm's ``train.py`` (timm >= 1.0.20) trains a *task*: ``task(input, target)``
returns ``{"loss": ..., "output": ...}`` (:class:`timm.task.TrainingTask`), and
its loop does the rest around that call: AMP and the loss scaler, gradient
accumulation and clipping, DDP (``task.prepare_distributed``), the EMA
(``task.setup_ema`` / ``update_ema``), validation (``task.get_eval_model()``)
and checkpoints (``task.get_checkpoint_state()``). A ``Distiller`` already has
that call shape, so :class:`DistillerTask` below is the whole adapter:

* the loss is the Distiller's: timm's own label loss (``train_loss_fn``, with
  its label smoothing or Mixup/CutMix soft targets) as the Distiller's ``"ce"``
  term (:func:`timm_label_loss`), plus fxswap's feature terms, which read no
  labels (``at``, ``hint``, ``srrl``); the frozen teacher is inside it;
* the optimiser sees ``task.get_trainable_module()``: the student and the
  hint/SRRL connectors;
* validation, the EMA and the checkpoints see the student alone, so timm's
  ``model_best.pth.tar`` holds the student's ``state_dict`` (no teacher, no
  connectors) and ``timm.create_model(..., checkpoint_path=...)`` on the
  cheapened architecture loads it; ``fxswap.save_student`` makes the
  self-describing file ``fxswap export`` takes.

No timm file changes. In your copy of ``train.py`` (timm ships it as a script to
adapt, outside the pip package) the task it builds becomes::

    teacher = create_model(args.model, pretrained=True, num_classes=args.num_classes)
    model = fxswap.cheapen(teacher, "G(N/4)")                      # the student timm trains
    task = DistillerTask(fxswap.Distiller(teacher, model, {"ce": timm_label_loss(train_loss_fn),
                                                            "at": 1000.0, "hint": 1.0}))

An older ``train.py`` (before tasks) calls ``output = model(input)`` then
``loss = loss_fn(output, target)``; there the same task replaces both lines:
``loss = task(input, target)["loss"]``.

    python examples/timm_task.py --tiny          # resnet10t at 32x32, random data, Mixup: seconds on a CPU
"""
from __future__ import annotations

import argparse

import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import TrainingTask
from timm.utils import ModelEmaV3, unwrap_model

import fxswap


def timm_label_loss(criterion):
    """timm's ``train_loss_fn(output, target)`` as a Distiller term ``fn(student_logits, teacher_logits, y)``."""
    def label_loss(student_logits, teacher_logits, targets):
        return criterion(student_logits, targets)

    return label_loss


class DistillerTask(TrainingTask):
    """A :class:`timm.task.TrainingTask` whose forward is a ``fxswap.Distiller``'s (see the module doc)."""

    def __init__(self, distiller: fxswap.Distiller, device=None, dtype=None, verbose: bool = False):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        self.trainable_module = distiller  # student + connectors; the teacher is hidden and frozen inside

    @property
    def student(self) -> torch.nn.Module:
        return unwrap_model(self.trainable_module).student

    def prepare_distributed(self, device_ids=None, **ddp_kwargs) -> DistillerTask:
        from torch.nn.parallel import DistributedDataParallel

        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def setup_ema(self, decay: float = 0.9999, use_warmup: bool = False, device=None, **kwargs):
        self.trainable_module_ema = ModelEmaV3(self.student, decay=decay, use_warmup=use_warmup, device=device,
                                               **kwargs)
        return self.trainable_module_ema

    def update_ema(self, step=None) -> None:
        if self.has_ema():
            self.trainable_module_ema.update(self.student, step=step)

    def get_eval_model(self, module=None, ema: bool = False):
        if module is None and not ema:
            return self.student  # validation and checkpoints: the student, not the distiller
        return super().get_eval_model(module, ema)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, logs = self.trainable_module(input, target)
        return {**logs, "loss": loss, "output": unwrap_model(self.trainable_module).last_logits}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet26d")
    p.add_argument("--spec", default="G(N/4)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--tiny", action="store_true", help="resnet10t at 32x32 on random data, one epoch of 2 steps")
    return p.parse_args(argv)


def main(tiny: bool = False, argv=None) -> dict:
    args = parse_args(argv if argv is not None else (["--tiny"] if tiny else None))
    if args.tiny:
        args.model, args.img_size, args.epochs = "resnet10t", 32, 1
    torch.manual_seed(0)
    teacher = timm.create_model(args.model, num_classes=args.num_classes)  # your trained teacher here
    student = fxswap.cheapen(teacher, args.spec)

    # what train.py builds from its arguments: Mixup + label smoothing, hence soft targets and this loss
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=args.num_classes)
    train_loss_fn = SoftTargetCrossEntropy()
    losses = {"ce": timm_label_loss(train_loss_fn), "at": 1000.0, "hint": 1.0, "srrl": 1.0}
    example = torch.zeros(2, 3, args.img_size, args.img_size)  # sizes the hint/SRRL connectors
    task = DistillerTask(fxswap.Distiller(teacher, student, losses, example_input=example))
    ema = task.setup_ema(decay=0.99)

    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=0.05, weight_decay=5e-5)
    scheduler, num_epochs = create_scheduler_v2(optimizer, sched="cosine", num_epochs=args.epochs, warmup_epochs=0)
    images = torch.randn(8, 3, args.img_size, args.img_size)
    labels = torch.randint(0, args.num_classes, (8,))
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]  # timm.data.create_loader(...) in a real run
    for epoch in range(num_epochs):  # train.py's train_one_epoch, reduced to its calls on the task
        task.train()
        for step, (x, y) in enumerate(batches):
            x, y = mixup(x, y)
            result = task(x, y)
            optimizer.zero_grad()
            result["loss"].backward()
            optimizer.step()
            task.update_ema(step=epoch * len(batches) + step)
        scheduler.step(epoch + 1)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {float(v.detach()):.4f}" for k, v in result.items() if k != "output"))
    return {"result": result, "task": task, "teacher": teacher, "student": student, "ema": ema.module,
            "checkpoint": task.get_checkpoint_state()}


if __name__ == "__main__":
    main()
