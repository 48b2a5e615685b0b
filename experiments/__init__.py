"""One experiment per question of the study note; see experiments/__main__.py."""
EXPERIMENTS = ('shapes', 'channel_growth', 'channels_vs_kernel', 'small_kernels',
               'even_kernels', 'learned_kernels', 'claims')
