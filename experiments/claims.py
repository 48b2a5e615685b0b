"""The note's checkable claims: sum vs mean in the convolution, ReLU vs sigmoid vs a
real normalisation (batch norm), and max vs average vs no pooling under small shifts.

Full mode: 10 arms x 5 seeds x 5 epochs, about 25 minutes on 2 CPU cores (the
no-pooling arm is the slow one):
  python -m experiments claims
"""
from experiments import common

NAME = 'claims'
TITLE = "The note's claims: mean vs sum, ReLU vs normalisation, pooling and shifts"
QUESTION = ('(a) The note says each position\'s products are "summed, then averaged": a '
            'convolution sums, and the mean is a fixed 1/k^2 rescaling. Does training care, '
            'and under which optimizer? (b) It calls ReLU a "normalization": how do ReLU, '
            'sigmoid and tanh compare, and what does a real normalisation (batch norm) add? '
            '(c) "Max pooling lowers sensitivity to position": max vs average vs no '
            'pooling, on test images moved by 1 and 2 pixels.')
METHOD = ('Arms over the note\'s network (5x5 convs, 6 -> 16, dense 120-84-10). Adam arms '
          'use the default recipe; the SGD arms use d2l\'s (sigmoid, SGD lr 0.9 constant, '
          'Xavier). Shifted accuracy averages the four directions (up, down, left, right) '
          'with zero fill.')
TRAINS = True

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
}
DEFAULT = 'relu, max pool, sum (default)'
SHIFTS = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def arms(quick):
  order = [DEFAULT, 'avg pool', 'relu + batch norm'] if quick else list(ARMS)
  return [common.Arm(label, ARMS[label]) for label in order]


def extra(dataset):
  def shifted(res):
    if res.config.model.normalization == 'batch':
      return {}  # the pooling comparison uses the arms without batch norm
    out = {}
    for pixels in (1, 2):
      accs = [common.accuracy(res.config, res.params,
                              common.shift_images(dataset.test_images, dy * pixels, dx * pixels),
                              dataset.test_labels) for dy, dx in SHIFTS]
      out[f'acc_shift{pixels}'] = sum(accs) / len(accs)
      out[f'drop_shift{pixels}'] = res.final['test_acc'] - out[f'acc_shift{pixels}']
    return out
  return shifted


def _lines(ctx, pairs, key='test_acc', what='test accuracy'):
  values = ctx.by_arm(key)
  return '\n'.join('- ' + common.verdict(a, values[a], b, values[b], what=what)
                   for a, b in pairs if values.get(a) and values.get(b))


def analyse(ctx):
  present = {a.label for a in ctx.arms}
  keep = lambda pairs: [(a, b) for a, b in pairs if a in present and b in present]
  mean_sum = _lines(ctx, keep([('relu, conv mean', DEFAULT),
                               ('d2l sgd, conv mean', 'd2l sgd, sum')]))
  activations = _lines(ctx, keep([(DEFAULT, 'sigmoid'), (DEFAULT, 'tanh'),
                                  ('relu + batch norm', DEFAULT),
                                  ('sigmoid + batch norm', 'sigmoid')]))
  pooling = _lines(ctx, keep([(DEFAULT, 'avg pool'), (DEFAULT, 'no pool')]))
  drops = '\n'.join(
      _lines(ctx, keep([(DEFAULT, 'avg pool'), (DEFAULT, 'no pool')]), key=key, what=what)
      for key, what in (('drop_shift1', 'accuracy lost to 1-pixel shifts'),
                        ('drop_shift2', 'accuracy lost to 2-pixel shifts')))
  table = common.arm_table(ctx, [('test acc, 1-px shifts', 'acc_shift1'),
                                 ('test acc, 2-px shifts', 'acc_shift2')])
  answer = f'''
**(a) Sum vs mean.** A mean-convolution is the sum times 1/k^2 = 1/25, the same
function family with the weights rescaled; what changes is how the optimizer
sees the weights.

{mean_sum or '(arms not run in this mode)'}

Adam normalises each parameter's step by its own gradient scale, so a fixed
rescaling of a layer should barely matter to it; plain SGD takes steps
proportional to the gradient, which the 1/25 factor shrinks for the conv
weights (and the conv output shrinks by the same factor at initialisation).
The lines above say whether that shows up in accuracy.

**(b) ReLU is an activation, not a normalisation.** ReLU, max(0, x), zeroes
negatives; a normalisation (batch norm) rescales each channel by statistics of
the batch. Compared here:

{activations or '(arms not run in this mode)'}

**(c) Pooling and position.** Accuracy on unshifted test images:

{pooling or '(arms not run in this mode)'}

How much accuracy each loses when the test images move (smaller is less
sensitive to position):

{drops or '(arms not run in this mode)'}

**Answer.** Each claim is judged by its lines above: a difference is claimed
only where its 95% interval excludes zero, and "no detectable difference"
means these seeds cannot tell the arms apart, not that they are equal.'''
  return [('Results', table), ('Answer', answer)]
