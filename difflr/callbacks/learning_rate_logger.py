"""(being written)"""

class LearningRateLogger:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


