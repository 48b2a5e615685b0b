"""The note's checkable claims: sum vs mean in the convolution, ReLU vs sigmoid vs a
real normalisation (batch norm), and max vs average vs no pooling under small shifts.

Full mode: 14 arms x (3 rates x 3 tuning seeds + 10 report seeds) = 266 runs, 3 more
per grid extension; each run trains at a constant rate until its validation accuracy has
not improved for 5 epochs (at most 50) and reports its best-on-validation model
(experiments/protocol.py). Resumable, e.g. in pieces of 50 minutes:
  python -m experiments claims --max_minutes=50
The checks train the primary comparisons' 7 arms only: --patience=10 and
--dataset=animal_mnist (docs/experiments.md#the-checks).

Expected runtime: not yet measured under this protocol (the no-pooling arm is the
slow one); the first group prints an estimate for the whole experiment on the machine
at hand.

Result: not yet re-run under the pre-registered protocol
(experiments/preregistration/claims.md); the superseded study's result is in git
history at 33b43d5 (`git show 33b43d5:experiments/results/claims/report.md`).
"""
import functools

import jax
import numpy as np

from experiments import evaluation
from experiments import protocol
from experiments import verdicts
from experiments import writeup
from lenet_jax.model import LeNet5

NAME = 'claims'
TITLE = "The note's claims: mean vs sum, ReLU vs normalisation, pooling and shifts"
QUESTION = ('(a) The note says each position\'s products are "summed, then averaged": a '
            'convolution sums, and the mean is a fixed 1/k^2 rescaling. Does training care, '
            'and under which optimizer? (b) It calls ReLU a "normalization": how do ReLU, '
            'sigmoid and tanh compare, and what does a real normalisation (batch norm) add? '
            '(c) "Max pooling lowers sensitivity to position": max vs average vs no '
            'pooling, on test images moved by 1 and 2 pixels.')
METHOD = ('Arms over the note\'s network (5x5 convs, 6 -> 16, dense 120-84-10). Adam arms '
          'use the default recipe; the SGD arms use d2l\'s (sigmoid, plain SGD, constant '
          'rate, Xavier) with the grid 0.3, 0.9, 2.7 around d2l\'s 0.9. Shifted accuracy '
          'averages the four directions (up, down, left, right) with zero fill; the drop is '
          'unshifted minus shifted test accuracy of the same run. Shift tolerance is also '
          'measured directly: the cosine similarity of LeNet5.features (the dense layer\'s '
          'input) of a test image and of its copy moved by 1 or 2 pixels, averaged over the '
          'test set and the four directions. Controls: a stride-2 conv in place of each '
          'pool (no pooling, the same map sizes), max pooling trained on images shifted at '
          'random by up to 2 pixels, and mean-conv arms compensated (initial kernels x25, '
          'kernel learning rate x25 for Adam, x625 for SGD), expected to match the sum '
          'conv within the margin. Each claim has its own '
          'reference (below); each claim is a Holm family of its own.')
TRAINS = True
D2L_RATES = (0.3, 0.9, 2.7)

D2L = {'model.activation': 'sigmoid', 'model.init': 'xavier', 'optim.optimizer': 'sgd',
       'optim.learning_rate': 0.9, 'optim.schedule': 'constant'}
ARMS = {
    'relu, max pool, sum (default)': {},
    'relu, conv mean': {'model.conv_reduction': 'mean'},
    'd2l sgd, sum': D2L,
    'd2l sgd, conv mean': {**D2L, 'model.conv_reduction': 'mean'},
    'sigmoid': {'model.activation': 'sigmoid'},
    'tanh': {'model.activation': 'tanh'},
    'relu + batch norm': {'model.normalization': 'batch'},
    'sigmoid + batch norm': {'model.activation': 'sigmoid', 'model.normalization': 'batch'},
    'avg pool': {'model.pool': 'avg'},
    'no pool': {'model.pool': 'none'},
    # the mean conv compensated: its initial function equals the sum conv's, and its
    # kernels' effective steps too (Adam's steps ignore the gradient's scale: lr x k^2;
    # SGD's gradient shrinks by 1/k^2 as well: lr x k^4)
    'relu, conv mean, init x25, lr x25': {'model.conv_reduction': 'mean',
                                          'model.conv_init_scale': 25.0,
                                          'optim.conv_lr_scale': 25.0},
    'd2l sgd, conv mean, init x25, lr x625': {**D2L, 'model.conv_reduction': 'mean',
                                              'model.conv_init_scale': 25.0,
                                              'optim.conv_lr_scale': 625.0},
    'stride-2 conv, no pool': {'model.pool': 'stride'},
    'max pool, shift-augmented (+-2 px)': {'data.augment_shift': 2},
}
DEFAULT = 'relu, max pool, sum (default)'
SHIFTS = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def arms(quick):
  order = [DEFAULT, 'avg pool', 'relu + batch norm'] if quick else list(ARMS)
  return [protocol.Arm(label, ARMS[label],
                       D2L_RATES if ARMS[label].get('optim.optimizer') == 'sgd' else None)
          for label in order]


MEAN_SUM = [('relu, conv mean', DEFAULT), ('d2l sgd, conv mean', 'd2l sgd, sum'),
            ('relu, conv mean, init x25, lr x25', DEFAULT),
            ('d2l sgd, conv mean, init x25, lr x625', 'd2l sgd, sum')]
ACTIVATIONS = [(DEFAULT, 'sigmoid'), ('tanh', DEFAULT), ('relu + batch norm', DEFAULT),
               ('sigmoid + batch norm', 'sigmoid')]
POOLING = [('avg pool', DEFAULT), ('no pool', DEFAULT), ('stride-2 conv, no pool', DEFAULT),
           ('max pool, shift-augmented (+-2 px)', DEFAULT)]
DROPS = ('drop_shift1', 'drop_shift2')
SIMILARITY = ('feature_cos_shift1', 'feature_cos_shift2')


C = protocol.Contrast
FAMILIES = (
    protocol.Family(
        'C1', 'A convolution "sums, then averages": does the mean matter?',
        'A mean conv is the sum conv times 1/k^2, a reparametrisation: compensated (kernels '
        'initialised 25x larger, conv updates 25x (Adam) or 625x (SGD) faster) it computes '
        'exactly what the sum conv does, so it is expected equivalent to the sum within the '
        'margin with either optimizer. Uncompensated, it starts 25x smaller and learns more '
        'slowly; expected lower, or the same once its own rate is tuned.',
        tuple(C(a, b) for a, b in MEAN_SUM),
        primary=('relu, conv mean, init x25, lr x25 - relu, max pool, sum (default)',
                 'relu, conv mean - relu, max pool, sum (default)')),
    protocol.Family(
        'C2', '"Normalization is ReLU": activations against a real normalization',
        'ReLU is an activation, not a normalization. Expected: ReLU above sigmoid; batch norm '
        'lifts sigmoid; with ReLU, batch norm adds little on this small network (no '
        'prediction of its sign); tanh near ReLU.',
        tuple(C(a, b) for a, b in ACTIVATIONS),
        primary=('relu + batch norm - relu, max pool, sum (default)',
                 'relu, max pool, sum (default) - sigmoid')),
    protocol.Family(
        'C3', '"Max pooling lowers sensitivity to position"',
        'Pooling absorbs a feature\'s move within its window, so against max pooling the '
        'networks without pooling (no pool, stride-2 conv) are expected to lose more accuracy '
        'to 1- and 2-pixel shifts of the test images; average against max pooling: no '
        'prediction; training on shifted images expected to lose the least.',
        tuple(C(a, b, metric) for metric in ('test_acc',) + DROPS for a, b in POOLING),
        primary=('avg pool - relu, max pool, sum (default) (drop_shift1)',
                 'no pool - relu, max pool, sum (default) (drop_shift1)')),
    protocol.Family(
        'C3b', 'Feature similarity under shifts (mechanism, secondary)',
        'The cosine similarity of the dense layer\'s input for an image and its shifted copy: '
        'expected lower without pooling than with max pooling.',
        tuple(C(a, b, metric) for metric in SIMILARITY for a, b in POOLING),
        primary=('no pool - relu, max pool, sum (default) (feature_cos_shift1)',)),
)


@functools.lru_cache(maxsize=None)
def _features_fn(model_cfg):
  model = LeNet5(model_cfg)
  return jax.jit(lambda params, x: model.apply({'params': params}, x, method=LeNet5.features))


def feature_similarity(cfg, params, images, dy, dx, batch=1000) -> float:
  """Mean cosine similarity of the dense layer's input for an image and its shifted copy."""
  fn = _features_fn(cfg.model)
  total = 0.0
  for i in range(0, len(images), batch):
    x = images[i:i + batch].astype(np.float32) / 255
    a = np.asarray(fn(params, x))
    b = np.asarray(fn(params, evaluation.shift_images(x, dy, dx)))
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    total += float(np.sum(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))
  return total / len(images)


def extra(dataset):
  def shifted(res):
    if res.config.model.normalization == 'batch':
      return {}  # the pooling comparison uses the arms without batch norm
    out = {}
    for pixels in (1, 2):
      sims = [feature_similarity(res.config, res.params, dataset.test_images,
                                 dy * pixels, dx * pixels) for dy, dx in SHIFTS]
      out[f'feature_cos_shift{pixels}'] = sum(sims) / len(sims)
    for pixels in (1, 2):
      accs = [evaluation.accuracy(res.config, res.params,
                                  evaluation.shift_images(dataset.test_images, dy * pixels,
                                                          dx * pixels),
                                  dataset.test_labels) for dy, dx in SHIFTS]
      out[f'acc_shift{pixels}'] = sum(accs) / len(accs)
      # the reported model's own unshifted accuracy: its best epoch on validation
      out[f'drop_shift{pixels}'] = (res.history[res.best_epoch - 1]['test_acc']
                                    - out[f'acc_shift{pixels}'])
    return out
  return shifted


def _pick(ctx, pairs, metric='test_acc'):
  return [o for o in ctx.outcomes if (o.contrast.arm, o.contrast.reference) in pairs
          and o.contrast.metric == metric]


def analyse(ctx):
  table = writeup.arm_table(ctx, ['acc_shift1', 'acc_shift2', *DROPS, *SIMILARITY])
  mean_sum, activations = _pick(ctx, MEAN_SUM), _pick(ctx, ACTIVATIONS)
  pooling = _pick(ctx, POOLING)
  drops = [o for metric in DROPS for o in _pick(ctx, POOLING, metric)]
  similarity = [o for metric in SIMILARITY for o in _pick(ctx, POOLING, metric)]
  none = '(arms not run in this mode)'
  answer = f'''
**(a) Sum vs mean.** A mean-convolution is the sum times 1/k^2 = 1/25: the same
function family with the weights rescaled; what changes is how the optimizer
sees the weights and how large the conv outputs are at initialisation.

{ctx.lines(mean_sum) or none}

**(b) ReLU is an activation, not a normalisation.** ReLU, max(0, x), zeroes
negatives; a normalisation (batch norm) rescales each channel by statistics of
the batch. Compared here:

{ctx.lines(activations) or none}

**(c) Pooling and position.** Accuracy on unshifted test images:

{ctx.lines(pooling) or none}

Accuracy lost when the test images move by 1 and 2 pixels (drop = unshifted -
shifted; a positive difference means the arm loses more than max pooling):

{ctx.lines(drops) or none}

Similarity of the dense layer's input for an image and its shifted copy (a
positive difference means the arm's features move less than max pooling's):

{ctx.lines(similarity) or none}

**Answer.** (a) Mean against sum: {verdicts.tally(ctx, mean_sum)}. (b) Activations
and batch norm: {verdicts.tally(ctx, activations)}. (c) Pooling, unshifted:
{verdicts.tally(ctx, pooling)}; accuracy lost to shifts against max pooling:
{verdicts.tally(ctx, drops)}; feature similarity under shifts against max pooling:
{verdicts.tally(ctx, similarity)}. Each verdict is Holm-corrected within its claim's
family, declared in the pre-registration ({ctx.margin_words()}).'''
  return [('Arms with shifted test accuracy', table), ('Answer', answer)]
