"""`python -m difflr demo`: what differential learning rates buy, on real data.

This subpackage implements the command; the command and its output are the
interface, the modules are internal (not part of difflr's public API, and
free to change):

- `data`: scikit-learn's bundled 8x8 digits, split into a pretraining half
  and a few-shot fine-tuning task (`digit % 3`), and two shifts of its
  test images;
- `network`: the small CNN, pretrained once per seed;
- `arms`: one way each of treating the learning rates, after the rows of
  ULMFiT's Table 7, built from `difflr.LRMultiplier`, `difflr.discriminative`
  and `difflr.callbacks.GradualUnfreezing`;
- `experiment`: the grid of arms x base learning rates x seeds, and what
  each run measures: the new task, forgetting of the pretraining task, and
  the new task under the two shifts;
- `report`: tables, CSV, Markdown and PNG plots;
- `cli`: the options.

Run `python -m difflr demo --help` for what it does; docs/demo.md has the
full results.
"""
