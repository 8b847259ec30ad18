"""`python -m difflr demo`: what differential learning rates buy, on real data.

This subpackage implements the command; the command and its output are the
interface, the modules are internal (not part of difflr's public API, and
free to change):

- `data`: scikit-learn's bundled 8x8 digits, split into a pretraining half
  and a few-shot fine-tuning task (`digit % 3`);
- `network`: the small CNN, pretrained once per seed;
- `arms`: one way each of treating the learning rates, after the rows of
  ULMFiT's Table 7, built from `difflr.LRMultiplier`, `difflr.discriminative`
  and `difflr.callbacks.GradualUnfreezing`;
- `experiment`: the grid of arms x base learning rates x seeds;
- `report`: tables, CSV, Markdown and PNG plots;
- `cli`: the options.

Run `python -m difflr demo --help` for what it does; docs/demo.md has the
full results.
"""
