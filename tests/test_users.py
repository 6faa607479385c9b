"""Users of the review desk: the CLI (password from standard input), roles, and what each may do."""

from __future__ import annotations

import io

import pytest

from infra import users
from infra.audit import AuditEvent
from infra.errors import AlreadyExists, InvalidInput, NotFound
from infra.users import ADMIN, AUDIT_LOG, BILLING, IMPORT, MANAGE_USERS, OVERRIDE, READ, REVIEW, SCHEDULER, TECHNOLOGIST


@pytest.fixture
def stdin(monkeypatch):
    def give(text: str) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(text))
    return give


def test_add_list_disable_password(run, stdin, cheap_hashes):
    stdin("a-long-password\n")
    code, out, err = run("users", "add", "jane", "--role", "technologist")
    assert code == 0 and "User jane added as technologist" in out and "a-long-password" not in out + err
    stdin("another-password\n")
    assert run("users", "add", "bob", "--role", "billing", "--user", "admin-cli")[0] == 0
    code, out, _ = run("users", "list")
    assert [line.split()[:3] for line in out.splitlines()] == [["bob", "billing", "active"],
                                                               ["jane", "technologist", "active"]]
    assert run("users", "disable", "bob")[0] == 0
    assert "disabled" in run("users", "list")[1].splitlines()[0]
    stdin("a-new-password-3\r\n")
    assert run("users", "password", "jane")[0] == 0
    actions = [(e.user, e.action, e.subject) for e in AuditEvent.select().where(AuditEvent.action.startswith("user."))]
    assert actions == [("cli", "user.added", "jane"), ("admin-cli", "user.added", "bob"), ("cli", "user.disabled", "bob"),
                       ("cli", "user.password_changed", "jane")]


def test_the_new_password_is_the_one_that_works(app):
    app.users.add("jane", TECHNOLOGIST, "first-password", by="t")
    app.users.set_password("jane", "second-password", by="t")
    assert app.users.authenticate("jane", "first-password") is None
    assert app.users.authenticate("jane", "second-password").role == TECHNOLOGIST
    app.users.disable("jane", by="t")
    assert app.users.authenticate("jane", "second-password") is None
    assert app.users.authenticate("nobody", "second-password") is None


@pytest.mark.parametrize("args, text, code, words", [
    (("users", "add", "Jane Doe", "--role", "admin"), "a-long-password\n", 2, "is not a user name"),
    (("users", "add", "jane", "--role", "admin"), "short\n", 2, "use at least 10"),
    (("users", "add", "jane", "--role", "admin"), "", 2, "no password on standard input"),
    (("users", "add", "jane", "--role", "admin"), " padded-password \n", 2, "starts or ends with a space"),
    (("users", "disable", "nobody"), "", 1, "no user is named 'nobody'"),
    (("users", "password", "nobody"), "a-long-password\n", 1, "no user is named"),
])
def test_refusals(run, stdin, args, text, code, words):
    stdin(text)
    got, out, err = run(*args)
    assert got == code and words in err and out == ""


def test_an_unknown_role_is_a_usage_error(run, stdin, capsys):
    stdin("a-long-password\n")
    with pytest.raises(SystemExit) as exit_:
        run("users", "add", "jane", "--role", "nurse")
    assert exit_.value.code == 2 and "invalid choice: 'nurse'" in capsys.readouterr().err


def test_a_name_is_added_once(app):
    app.users.add("jane", ADMIN, "a-long-password", by="t")
    with pytest.raises(AlreadyExists, match="exists already"):
        app.users.add("jane", BILLING, "a-long-password", by="t")
    with pytest.raises(NotFound):
        app.users.get("bob")
    with pytest.raises(InvalidInput):
        app.users.add("bob", "root", "a-long-password", by="t")


def test_the_password_is_stored_as_an_argon2id_hash(app):
    app.users.add("jane", ADMIN, "a-long-password", by="t")
    [row] = users.UserRow.select()
    assert row.password_hash.startswith("$argon2id$") and "a-long-password" not in row.password_hash


@pytest.mark.parametrize("role, allowed", [
    (TECHNOLOGIST, {READ, REVIEW}),
    (SCHEDULER, {READ, OVERRIDE, IMPORT}),
    (BILLING, {READ}),
    (ADMIN, {READ, REVIEW, OVERRIDE, IMPORT, AUDIT_LOG, MANAGE_USERS}),
])
def test_what_each_role_may_do(role, allowed):
    assert {action for action in users.PERMISSIONS if users.may(role, action)} == allowed
