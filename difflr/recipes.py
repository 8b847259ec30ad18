"""(being written)"""

def discriminative(*args, **kwargs):
    raise NotImplementedError


def layerwise_decay(*args, **kwargs):
    raise NotImplementedError


def no_decay(*args, **kwargs):
    raise NotImplementedError


