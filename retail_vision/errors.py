"""Errors a user can fix (exit 2) as opposed to bugs (exit 1)."""


class UserError(Exception):
    """Bad input: recipe, data, weights or usage. The message is one line that says what to fix."""

    @classmethod
    def listing(cls, problems: list[str], where: str | None = None) -> "UserError":
        """One error for several problems: a header line, then one indented line per problem."""
        header = f"{where}: {len(problems)} problems:" if where else f"{len(problems)} problems:"
        return cls("\n".join([header] + [f"  {problem}" for problem in problems]))


class RecipeError(UserError):
    """A recipe field is unknown, of the wrong type or out of range."""


class DataError(UserError):
    """The data a recipe points to is missing, empty or unusable."""


class WeightsError(UserError):
    """Pretrained weights are missing (offline, not cached) or do not match the backbone."""


class ParityError(Exception):
    """An exported artifact failed its parity gate (exit 1): e.g. int8 lost too much accuracy."""
