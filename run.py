"""Train LeNet-5 variants on Fashion-MNIST and friends: one run or a sweep.

  python run.py                                   # the default recipe, one run
  python run.py --recipe=d2l                      # d2l's sigmoid/SGD recipe
  python run.py --channels=6,16 --channels=12,32 --kernel_size=3 --kernel_size=5
      --padding=same --seeds=2 --epochs=5 --workdir=/tmp/sweep   # 2 x 2 x 2 = 8 runs
  python run.py --describe --kernel_size=3 --convs_per_block=2   # shapes only

Sweep syntax: a scalar flag takes comma-separated values (--learning_rate=1e-3,3e-3);
a per-block flag (channels, kernel_size, padding, convs_per_block, dense) takes one
value per flag, commas between blocks, and is repeated to sweep. The sweep is the
product of all swept flags, times --seeds. All logic lives in lenet_jax/cli.py.
"""
import sys

from absl import app
from absl import flags

from lenet_jax import cli
from lenet_jax import console

cli.define_flags()
flags.adopt_module_key_flags(cli)  # so --help lists them

if __name__ == '__main__':
  console.install()  # dependency warnings: once each, one line, as they happen
  app.run(lambda argv: sys.exit(cli.main(argv)), flags_parser=cli.parse_flags)
