"""`clinicsync mapping …`: see, export, import, preview and govern a stream's field mapping headless.

The same store, validation and allow-list as the Field mapping tab (mapping/store.py), so neither can save a
mapping the other would refuse.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinicsync.mapping.defaults import DEFAULT_MAPPINGS
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX, DocumentError, StreamMapping, to_document
from clinicsync.mapping.validate import MappingInvalid
from clinicsync.store import mappings as mapping_store

DEFAULT_STREAM = "cliniko.patients"
Printer = Callable[[str], None]
# A mapping document is a few KB; a bound keeps `mapping import /dev/zero` (or a wrong, huge file) from reading
# until memory runs out.
MAX_MAPPING_FILE_BYTES = 1_000_000


class InputTooLarge(ValueError):
    pass


def _record_id(text: str) -> str:
    from clinicsync.sources.cliniko import is_record_id

    if not is_record_id(text):  # every stream reads Cliniko today, whose ids are numbers
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Cliniko patient id: it is a number, such as 836447129235883061 (the last part of "
            "the patient's address in Cliniko)"
        )
    return text.strip()


def read_limited(name: str, limit: int = MAX_MAPPING_FILE_BYTES) -> str:
    """The text of a file (or of standard input for "-"), refused when it is larger than `limit` bytes."""
    if name == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open(name, "rb") as source:
            data = source.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(
            f"{'The input' if name == '-' else name} is larger than {limit // 1_000_000} MB, so it is not a mapping "
            "file (one is a few KB); nothing was imported. Check the file name."
        )
    return data.decode("utf-8")


def add_parser(sub: Any) -> None:
    mapping = sub.add_parser("mapping", help="show, export, import and preview field mappings")
    actions = mapping.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.add_argument("--stream", default=DEFAULT_STREAM, help=f"default: {DEFAULT_STREAM}")
        return parser

    command("show", "the current mapping, its scope, write-back and allowed clinical fields").add_argument(
        "--json", action="store_true", help="print the JSON document instead"
    )
    command("export", "write the mapping as JSON (the format is in README.md)").add_argument(
        "file", help="file to write, or - for standard output"
    )
    command("import", "validate a JSON mapping and make it current").add_argument("file", help="file, or - for stdin")
    preview = command("preview", "print the Stripe request a sync would send for one record (writes nothing)")
    preview.add_argument(
        "--record", required=True, type=_record_id, help="the source record id, e.g. a Cliniko patient id"
    )
    preview.add_argument("--json", action="store_true")
    command("fields", "the source fields that can be mapped, with their privacy class")
    allow = command("allow", "allow one clinical field to be mapped, after reading what that sends to Stripe")
    allow.add_argument("field", help="e.g. notes, date_of_birth or custom_fields.<token>")
    allow.add_argument("--yes", action="store_true", help="confirm without the prompt (headless use)")
    command("disallow", "withdraw an allowance (remove the field from the mapping first)").add_argument("field")
    command("reset", "make the built-in default mapping current again")
    writeback = command("writeback", "progress of the Stripe id write-back; --run continues it now")
    writeback.add_argument("--run", action="store_true", help="run the backfill (until done or --seconds)")
    writeback.add_argument("--seconds", type=float, default=None, help="stop after this long")


def run(args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.app import bootstrap
    from clinicsync.cli import EXIT_CONFIG

    ctx = bootstrap()
    if args.stream not in DEFAULT_MAPPINGS:
        err(f"Unknown stream {args.stream!r}; known streams: {', '.join(DEFAULT_MAPPINGS)}")
        return EXIT_CONFIG
    handler = {
        "show": _show,
        "export": _export,
        "import": _import,
        "preview": _preview,
        "fields": _fields,
        "allow": _allow,
        "disallow": _disallow,
        "reset": _reset,
        "writeback": _writeback,
    }[args.action]
    try:
        return handler(ctx, args, out, err)
    except MappingInvalid as exc:
        err("The mapping was not saved:" if args.action in ("import", "reset") else "Refused:")
        for problem in exc.problems:
            err(f"  {problem}")
        return EXIT_CONFIG
    except DocumentError as exc:
        err(f"Not a valid mapping file: {exc}")
        return EXIT_CONFIG


# --- catalogue -------------------------------------------------------------------------------------------
def _catalogue(ctx: Any, mapping: StreamMapping, err: Printer) -> FieldCatalogue:
    """The source's fields; with the clinic's custom fields when the mapping uses any and Cliniko can be asked."""
    from clinicsync.mapping.preview import catalogue_for
    from clinicsync.sync.preview import connect, source_settings

    needs = mapping.writeback.enabled or any(s.startswith(CUSTOM_FIELD_PREFIX) for s in mapping.source_fields)
    if not needs:
        return catalogue_for(mapping, None)
    try:
        connection = connect(ctx.settings, ctx.secrets, mapping.stream)
    except Exception as exc:  # no key, no network: check what can be checked offline, and say so
        err(f"(custom fields not checked against Cliniko: {exc})")
        return catalogue_for(mapping, None)
    try:
        return catalogue_for(mapping, source_settings(connection, mapping))
    finally:
        connection.close()


# --- actions ---------------------------------------------------------------------------------------------
def _show(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    mapping = mapping_store.load(args.stream)
    if mapping.unreadable and args.json:
        err(mapping.unreadable)
        return 2
    if args.json:
        out(json.dumps({**to_document(mapping), "version": mapping.version}, ensure_ascii=False, indent=2))
        return 0
    catalogue = FieldCatalogue.for_source(mapping.source_system, mapping.source_type)
    origin = f"version {mapping.version}" if mapping.version else "built-in default"
    if mapping.unreadable:
        origin = "stored version unreadable; the built-in default is shown, and nothing is sent"
    out(f"{mapping.stream} → Stripe {mapping.stripe_object}s ({origin})")
    out(f"  scope: {mapping.scope.describe()}")
    zone = mapping.time_zone or "the clinic's (from Cliniko; Australia/Melbourne until known)"
    out(f"  time zone: {zone}")
    wb = mapping.writeback
    out(f"  write-back: {'on, custom field ' + wb.field_token if wb.enabled else 'off'}")
    for row, rule in enumerate(mapping.rules, start=1):
        classes = sorted({catalogue.class_of(s) for s in rule.sources})
        options = json.dumps(dict(rule.options), ensure_ascii=False) if rule.options else ""
        extras = " ".join(
            x for x in (rule.role and f"[{rule.role}]", rule.overflow == "truncate" and "[truncate]") if x
        )
        sources = ", ".join(rule.sources) or "(none)"
        line = f"  {row:>2}. {rule.target:<28} ← {sources}  {rule.transform} {options} {extras}"
        out(line.rstrip() + f"  ({'/'.join(classes) or 'constant'})")
    out(f"  archived marker: metadata.{mapping.archived_marker}")
    allowed = sorted(mapping_store.allowed_fields(args.stream))
    out(f"  clinical fields allowed: {', '.join(allowed) or 'none'}")
    problems = mapping_store.check(mapping, catalogue)
    for problem in problems:
        err(f"  problem: {problem}")
    return 2 if problems else 0


def _export(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    mapping = mapping_store.load(args.stream)
    if mapping.unreadable:  # exporting the stand-in default would pass it off as the clinic's mapping
        err(mapping.unreadable)
        return 2
    text = json.dumps({**to_document(mapping), "version": mapping.version}, ensure_ascii=False, indent=2) + "\n"
    if args.file == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.file).write_text(text, encoding="utf-8")
        except OSError as exc:
            err(f"Could not write {args.file}: {exc.strerror or exc}")
            return 2
        out(f"Wrote the {args.stream} mapping (version {mapping.version}) to {args.file}")
    return 0


def _import(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    try:
        raw = read_limited(args.file)
    except InputTooLarge as exc:
        err(str(exc))
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        err(f"Could not read {args.file}: {getattr(exc, 'strerror', None) or exc}")
        return 2
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"not JSON ({exc})") from None
    mapping = mapping_store.parse(args.stream, document)
    result = mapping_store.save(mapping, _catalogue(ctx, mapping, err))
    if not result.changed:
        out(f"The {args.stream} mapping is already exactly this (version {result.mapping.version}); nothing changed.")
    else:
        out(f"Saved the {args.stream} mapping as version {result.mapping.version}.")
        if result.cursor_reset:
            out("The next sync re-reads every record and updates exactly those whose Stripe fields change.")
    return 0


def _preview(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.sync.preview import connect, fetch_preview

    mapping = mapping_store.load(args.stream)
    if mapping.unreadable:  # a sync sends nothing with it, so there is nothing to preview
        err(mapping.unreadable)
        return 2
    connection = connect(ctx.settings, ctx.secrets, args.stream)
    try:
        preview = fetch_preview(connection, mapping, args.record)
    finally:
        connection.close()
    for problem in preview.problems:
        err(f"left out of the preview: {problem}")
    if args.json:
        out(json.dumps(preview.to_json(), ensure_ascii=False, indent=2))
    elif not preview.found:
        out(f"No {mapping.source_type} {args.record}: {preview.error}")
    else:
        linked = f"linked to {preview.stripe_id}" if preview.stripe_id else "not linked yet"
        out(f"{preview.display_name} ({mapping.source_type} {args.record}, {linked}) — dry run, nothing written")
        if preview.error:
            out(f"  would fail: {preview.error}")
        else:
            verb = "update" if preview.op == "update" else "create (or link to a customer with the same email)"
            out(f"  Stripe request: {verb}")
            out("  " + json.dumps(preview.params, ensure_ascii=False, indent=2).replace("\n", "\n  "))
        for note in preview.notes:
            out(f"  note: {note}")
        changed = [d for d in preview.diff if d.changed]
        if preview.stripe_id:
            out("  changes against Stripe now:" if changed else "  no change against Stripe now")
            for d in changed:
                out(f"    {d.target}: {d.current!r} → {d.new!r}")
    if preview.problems:
        return 2
    return 0 if preview.found and not preview.error else 1


def _fields(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    mapping = mapping_store.load(args.stream)
    catalogue = _catalogue(ctx, _with_writeback_probe(mapping), err)
    allowed = mapping_store.allowed_fields(args.stream)
    for entry in catalogue.fields:
        flag = " (allowed)" if entry.name in allowed else (" — needs an allowance" if entry.needs_allowance else "")
        out(f"{entry.name:<48} {entry.cls:<9} {entry.label}{flag}")
    return 0


def _with_writeback_probe(mapping: StreamMapping) -> StreamMapping:
    """A copy that makes _catalogue ask Cliniko for custom fields (listing them is the point of `fields`)."""
    from dataclasses import replace

    from clinicsync.mapping.spec import WritebackConfig

    return replace(mapping, writeback=WritebackConfig(enabled=True, field_token=mapping.writeback.field_token))


def _allow(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    mapping = mapping_store.load(args.stream)
    catalogue = _catalogue(ctx, _with_writeback_probe(mapping), err)
    entry = catalogue.get(args.field)
    if entry is None:
        err(f"{args.field} is not a field of {mapping.source_system} {mapping.source_type}s (see `mapping fields`).")
        return 2
    if not entry.needs_allowance:
        out(f"{args.field} is {entry.cls} information and can be mapped without an allowance.")
        return 0
    warning = mapping_store.warning_for(args.stream, args.field, catalogue, mapping)
    out("WARNING: " + warning)
    if not args.yes:
        if not sys.stdin.isatty():
            err("Not allowed: confirm with --yes (headless) after reading the warning above.")
            return 2
        answer = input(f"Type the field name ({args.field}) to allow it: ").strip()
        if answer != args.field:
            err("Not allowed.")
            return 2
    row = mapping_store.allow(args.stream, args.field, warning=warning, via="cli")
    out(f"Allowed {args.field} for {args.stream} (recorded: {row.decided_by}, {row.decided_at:%Y-%m-%d %H:%M} UTC).")
    return 0


def _disallow(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    row = mapping_store.withdraw(args.stream, args.field, via="cli")
    out(f"Withdrew the allowance for {args.field} ({row.decided_by}, {row.decided_at:%Y-%m-%d %H:%M} UTC).")
    return 0


def _reset(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    mapping = mapping_store.default_mapping(args.stream)
    result = mapping_store.save(mapping, _catalogue(ctx, mapping, err))
    if result.changed:
        out(f"The built-in default is the {args.stream} mapping again (version {result.mapping.version}).")
    else:
        out("The mapping already is the built-in default.")
    return 0


def _writeback(ctx: Any, args: argparse.Namespace, out: Printer, err: Printer) -> int:
    from clinicsync.mapping.preview import connect
    from clinicsync.store.models import AccountPair
    from clinicsync.sync import writeback

    mapping = mapping_store.load(args.stream)
    config = mapping.writeback
    if not config.enabled:
        out("Write-back is off. Turn it on in the mapping (writeback.enabled and field_token) to use it.")
        return 0
    if not args.run:
        for pair in AccountPair.select().order_by(AccountPair.last_used_at.desc()):
            done, total = writeback.progress(pair, args.stream, config.field_token)
            out(f"{pair.label}: {done} of {total} linked records carry their Stripe id")
        return 0
    from clinicsync.profile_lock import ProfileLock

    with ProfileLock(ctx.paths.lock_file):
        connection = connect(ctx.settings, ctx.secrets, args.stream)
        try:
            if connection.pair is None:
                err("These accounts have not been synced yet; run `clinicsync sync --once` first.")
                return 2
            result = writeback.backfill(
                connection.source,
                connection.pair,
                args.stream,
                config.field_token,
                seconds=args.seconds,
                report=lambda done, total: print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True),
            )
        finally:
            connection.close()
    print(file=sys.stderr)
    out(
        f"write-back: {result.written} written, {result.already} already set, {result.failed} refused; "
        f"{result.total - result.remaining} of {result.total} done"
        + (" (stopped: time limit)" if result.stopped_early else "")
    )
    if result.message:
        out(result.message)
    return 1 if result.failed else 0
