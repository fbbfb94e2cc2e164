"""Adam as PyTorch's torch.optim.Adam computes it (the reference's optimizer, every stage).

Keras's Adam folds both bias corrections into the step size and adds epsilon to the uncorrected
second moment:

    keras:    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    pytorch:  w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

They are one formula whose epsilon, in PyTorch's form, is eps / sqrt(1 - b2^t) for Keras: 31.6x
PyTorch's at step 1, 14.2x at step 5, 3.2x at step 100, within 10% after 1,750 steps and 1% after
3,925 (b2 = 0.999). A weight whose gradient is not large against that epsilon moves less under
Keras in the first hundreds of steps (docs/parity.md has the numbers). TorchAdam computes PyTorch's; its state (momentums, velocities, iterations) is
Keras's Adam's, so checkpoints of either restore into the other.
"""

import keras
from keras import ops

from tfcxr.constants import ADAM_EPSILON


@keras.saving.register_keras_serializable(package="tfcxr")
class TorchAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam with PyTorch's update (epsilon added after the bias correction of the
    second moment); default epsilon PyTorch's 1e-8. amsgrad is not supported."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=ADAM_EPSILON, name="torch_adam",
                 **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("TorchAdam does not implement amsgrad")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name,
                         **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        """torch.optim.Adam's step (single-tensor, no weight decay) on one variable."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        bias_correction1 = 1 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias_correction2 = 1 - ops.power(ops.cast(self.beta_2, dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))  # m.lerp_(g, 1 - b1)
        self.assign(v, ops.add(ops.multiply(v, self.beta_2), ops.multiply(ops.square(gradient), 1 - self.beta_2)))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_correction2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / bias_correction1), denominator))
