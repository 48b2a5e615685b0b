"""d2l's recipe: sigmoid, plain SGD at a constant rate 0.9, batch 256, Xavier init,
10 epochs, on the note's network (max pooling).

What and why: d2l's training recipe for LeNet, so that our network
can be set against the figures d2l and the PyTorch reference report
(`../shared/NOTES.md`, quoted in docs/experiments.md:25-30: d2l 0.76-0.83 across
rebuilds for its average-pool network; the PyTorch reference 0.845-0.853 with
max pooling). d2l-en's own network pools by average: add `--pool=avg`.

Command (Fashion-MNIST, seeds 0-2):

  python run.py --recipe=d2l --seeds=3

Expected runtime: runtime not recorded.

Result (docs/experiments.md:9-22, measured at 3c3be45 on the 2-core CPU;
Fashion-MNIST, 55,000 train / 5,000 validation / 10,000 test, seeds 0-2, mean
+- std of the final epoch): validation accuracy 0.8412 +- 0.0056, test accuracy
0.8318 +- 0.0061 (per seed 0.8291, 0.8388, 0.8275), below the PyTorch
reference's range on all three seeds, a gap not traced (docs/experiments.md:28-30).
With `--pool=avg` (d2l-en's network): validation 0.8118 +- 0.0082, test
0.8031 +- 0.0090 (docs/experiments.md:23).
"""
from lenet_jax.config import Config, ModelConfig, OptimConfig


def get_config() -> Config:
  return Config(model=ModelConfig(activation='sigmoid', init='xavier'),
                optim=OptimConfig(optimizer='sgd', learning_rate=0.9,
                                  schedule='constant'),
                epochs=10)
