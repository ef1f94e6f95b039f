"""Training, validation and test parts of a data set, of any kind of example."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmcourse.errors import ConfigError

Example = TypeVar("Example")


@dataclass(frozen=True)
class Split(Generic[Example]):
    """Training, validation and test examples (SMS messages, instruction entries ...)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def truncated(self, max_examples: int | None) -> Split[Example]:
        """At most ``max_examples`` examples of each part (its first ones); None keeps all."""
        if max_examples is None:
            return self
        if max_examples < 1:
            raise ConfigError(f"max_examples must be >= 1 or None, got {max_examples}")
        return Split(*(part[:max_examples] for part in (self.train, self.validation, self.test)))

    def filtered(self, keep: Callable[[Example], bool]) -> Split[Example]:
        """The examples of each part that ``keep`` accepts, in their order."""
        return Split(*([example for example in part if keep(example)]
                       for part in (self.train, self.validation, self.test)))
