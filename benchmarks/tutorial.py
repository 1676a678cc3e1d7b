"""The PyTorch tutorial's script as a user would run it (`python benchmarks/tutorial.py`): the bare reference.

The tutorial's code: imports, seed, the six points, nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()), SGD at lr 1,
1000 epochs, a line every 100; its loop in a function so that tracking_overhead.py times the same loop in-process.
"""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


def bare_loop(x_train: torch.Tensor, y_train: torch.Tensor, nb_epochs: int, log: Callable[[str], None]) -> None:
    """The tutorial's model, optimizer and loop, its log line handed to `log` (print, in the script)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())
    optimizer = optim.SGD(model.parameters(), lr=1)
    for epoch in range(nb_epochs + 1):
        hypothesis = model(x_train)
        cost = F.binary_cross_entropy(hypothesis, y_train)

        optimizer.zero_grad()
        cost.backward()
        optimizer.step()

        if epoch % 100 == 0:
            prediction = hypothesis >= torch.FloatTensor([0.5])
            correct_prediction = prediction.float() == y_train
            accuracy = correct_prediction.sum().item() / len(correct_prediction)
            log(
                "Epoch {:4d}/{} Cost: {:.6f} Accuracy {:2.2f}%".format(  # noqa: UP032 - the tutorial's line
                    epoch, nb_epochs, cost.item(), accuracy * 100
                )
            )


if __name__ == "__main__":
    x_data = [[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]]
    y_data = [[0], [0], [0], [1], [1], [1]]
    bare_loop(torch.FloatTensor(x_data), torch.FloatTensor(y_data), 1000, print)
