"""(being written)"""

class GradualUnfreezing:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


