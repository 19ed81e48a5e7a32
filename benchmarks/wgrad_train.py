"""The trainer with and without forward-conv weight gradients, interleaved, in one process.

Usage: python benchmarks/wgrad_train.py [WIDTH] [ROUNDS] [DATA_ROOT]   (defaults: 16 8
../shared/datasets/cifar10; [2,2,2,2], batch 128, the machine's default precision, 2 epochs of
4 x 256/WIDTH batches, tracking off)

Each round runs `sweeper.engine.train` twice, once with the weight-gradient rule of this machine
(`sweeper.convs.forward_weight_grad_pixels`) and once with the library's weight gradients
everywhere, in reversed order every other round, and prints each run's training images/s (after
its first step); the end prints the medians and the median [min, max] of the rounds' ratios.
Where the rule gives 0 both runs are the same.
"""

import logging
import statistics
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

import sweeper.engine as engine
from sweeper.config import register
from sweeper.convs import forward_weight_grad_pixels


def main():
    width = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    root = sys.argv[3] if len(sys.argv) > 3 else "../shared/datasets/cifar10"
    register()
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("config", overrides=[
            f"model.width={width}", "model.blocks=[2,2,2,2]", "tracking=off", f"data.root={root}",
            f"data.train_size={128 * 4 * max(1, 256 // width)}", "data.val_size=1000",
            "data.test_size=128", "trainer.epochs=2", "trainer.log_every=0"])
    logging.disable(logging.INFO)
    rules = {"library": lambda device, amp: 0, "forward": forward_weight_grad_pixels}
    speed = {name: [] for name in rules}
    for r in range(rounds):
        for name in list(rules)[::1 if r % 2 == 0 else -1]:
            engine.forward_weight_grad_pixels = rules[name]  # read by train() as it starts
            speed[name].append(engine.train(cfg).images_per_s)
        print(f"round {r + 1}: " + "  ".join(f"{n} {s[-1]:.0f} img/s" for n, s in speed.items()),
              flush=True)
    ratios = [b / a for a, b in zip(speed["library"], speed["forward"])]
    print(f"median img/s: library {statistics.median(speed['library']):.0f}, forward "
          f"{statistics.median(speed['forward']):.0f}; ratio {statistics.median(ratios):.3f}x "
          f"[{min(ratios):.3f}, {max(ratios):.3f}]")


if __name__ == "__main__":
    main()
