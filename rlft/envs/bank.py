"""`bank`: the built-in stateful environment (method form).

A few accounts with balances; the model opens accounts, deposits, withdraws
and transfers through the class's methods, over two or more user turns
(`builtin:bank` rows). Its end state is the balances, which the `state_match`
reward compares with the state the row's reference calls leave.
"""

from __future__ import annotations

from rlft.envs.base import ENVS


@ENVS.register("bank")
class Bank:
    """Accounts by owner name, balances in whole dollars."""

    def __init__(self, accounts: dict | None = None) -> None:
        self.accounts: dict[str, int] = {k: int(v) for k, v in (accounts or {}).items()}

    def _get(self, name: str) -> int:
        if name not in self.accounts:
            raise KeyError(f"no account for {name!r}; the accounts are "
                           f"{', '.join(sorted(self.accounts)) or 'none'}")
        return self.accounts[name]

    def open_account(self, name: str, deposit: int = 0) -> str:
        """Open an account for a person, with an optional first deposit.

        Args:
            name: the owner's name
            deposit: dollars to put in at once
        """
        if name in self.accounts:
            raise ValueError(f"{name} already has an account")
        if deposit < 0:
            raise ValueError("a deposit cannot be negative")
        self.accounts[name] = int(deposit)
        return f"opened an account for {name} with {deposit} dollars"

    def deposit(self, name: str, amount: int) -> int:
        """Put money into an account; returns the new balance.

        Args:
            name: the owner's name
            amount: dollars to put in
        """
        if amount <= 0:
            raise ValueError("the amount must be positive")
        self.accounts[name] = self._get(name) + int(amount)
        return self.accounts[name]

    def withdraw(self, name: str, amount: int) -> int:
        """Take money out of an account; returns the new balance.

        Args:
            name: the owner's name
            amount: dollars to take out
        """
        if amount <= 0 or amount > self._get(name):
            raise ValueError(f"cannot withdraw {amount} from {name}'s {self._get(name)} dollars")
        self.accounts[name] -= int(amount)
        return self.accounts[name]

    def transfer(self, source: str, target: str, amount: int) -> str:
        """Move money from one account to another.

        Args:
            source: who pays
            target: who receives
            amount: dollars to move
        """
        self._get(target)
        self.withdraw(source, amount)
        self.accounts[target] += int(amount)
        return f"moved {amount} dollars from {source} to {target}"

    def balance(self, name: str) -> int:
        """The balance of an account.

        Args:
            name: the owner's name
        """
        return self._get(name)

    def state(self) -> dict:
        return {"accounts": dict(sorted(self.accounts.items()))}
