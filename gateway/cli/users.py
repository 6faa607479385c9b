"""Command-line verbs of the review desk's users: add, list, disable, password. Parsing and printing only.

A password is read from standard input (one line; a terminal does not echo it), never
from the command line, where other users of the machine could read it in the process list.
"""

from __future__ import annotations

import getpass
import sys

from infra.errors import InvalidInput
from infra.users import ROLES


def register(verbs, common) -> None:
    users = verbs.add_parser("users", parents=[common], help="users of the review desk and the API")
    sub = users.add_subparsers(dest="users_verb", metavar="ACTION", required=True)
    add = sub.add_parser("add", parents=[common], help="add a user (password read from standard input)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="technologist reviews held studies; scheduler overrides withheld orders and imports; "
                          "billing reads; admin does all and manages users")
    add.set_defaults(run=add_user)
    listing = sub.add_parser("list", parents=[common], help="every user, role and whether disabled")
    listing.set_defaults(run=list_users)
    disable = sub.add_parser("disable", parents=[common], help="refuse this user's logins from now on (audited)")
    disable.add_argument("name")
    disable.set_defaults(run=disable_user)
    password = sub.add_parser("password", parents=[common], help="set a new password (read from standard input)")
    password.add_argument("name")
    password.set_defaults(run=set_password)
    for parser in (add, disable, password):
        parser.add_argument("--user", default="cli", help="who makes the change (for the audit log)")


def read_password(stdin=None) -> str:
    """One line of standard input without its line break; prompted without echo on a terminal."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise InvalidInput("the two passwords differ; nothing was changed, run the command again")
        return first
    line = stdin.readline()
    if not line:
        raise InvalidInput("no password on standard input; pipe it in, e.g. printf '%s\\n' \"$PW\" | "
                           "gatekeeper users add NAME --role ROLE")
    return line.rstrip("\r\n")


def add_user(app, args) -> int:
    user = app.users.add(args.name, args.role, read_password(), by=args.user)
    print(f"User {user.name} added as {user.role}. They log in at the review desk with this password.")
    return 0


def list_users(app, args) -> int:
    users = app.users.list()
    if not users:
        print("No users. Add one with: gatekeeper users add NAME --role admin")
        return 0
    for u in users:
        print(f"  {u.name:<24} {u.role:<13} {'disabled' if u.disabled else 'active':<9} since {u.created_at:%Y-%m-%d}")
    return 0


def disable_user(app, args) -> int:
    user = app.users.disable(args.name, by=args.user)
    print(f"User {user.name} disabled: their logins and API calls are refused from now on.")
    return 0


def set_password(app, args) -> int:
    user = app.users.set_password(args.name, read_password(), by=args.user)
    print(f"New password set for {user.name}.")
    return 0
