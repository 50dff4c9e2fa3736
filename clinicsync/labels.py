"""The words people see: one table of names for streams, roles, Stripe fields, transforms and their options, and
the helpers that turn ClinicSync's own messages into words for the desktop app. Qt-free, so the CLI, the
notifications and the tests read the same table.

Identifiers (`cliniko.patients`, `cross_ref`, `preferred_phone`) stay in the code, the database and the JSON
format; nothing the window shows should need them. Messages written for the command line name commands and
environment variables; `for_gui()` gives the window its own wording of them without changing the engine's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clinicsync.mapping.fields import FieldCatalogue
    from clinicsync.mapping.spec import FieldRule, StreamMapping
    from clinicsync.mapping.validate import Problem


# --- counting -------------------------------------------------------------------------------------------------
def plural(count: int, one: str, many: str | None = None) -> str:
    """ "1 record", "3 records", "1 record needs", "3 records need": the count and the words that agree with it.

    `many` defaults to `one` + "s"; give it when the plural is irregular or a verb follows
    (plural(n, "record needs", "records need"))."""
    return f"{count:,} {one if count == 1 else (many if many is not None else one + 's')}"


def sentence(text: str) -> str:
    """The first letter capitalised, the rest left alone ("there is no record 5" → "There is no record 5")."""
    return text[:1].upper() + text[1:]


# --- a run's counts -----------------------------------------------------------------------------------------
NOT_PAID_THROUGH_STRIPE = "not paid through Stripe"
# A record held back for a run because an earlier change to it is still queued for Stripe: in every stream, and
# never one of the stream's own names for what it skipped (an invoice held back is not "not paid through Stripe").
WAITING_FOR_EARLIER_CHANGE = "waiting for an earlier change to reach Stripe"
# A run's counter named for what it means in one stream, where the engine's word would mislead: an invoice that no
# Stripe payment paid (nothing found to link, or nothing to pay) is "skipped" to the engine.
STREAM_COUNT_NAMES = {("cliniko.invoices", "skipped"): NOT_PAID_THROUGH_STRIPE}
COUNT_NAMES = {"waiting": WAITING_FOR_EARLIER_CHANGE}  # a counter's name in every stream, window and command line
COUNT_WORDS = {"review": "sent to review"}  # the window's words where the command line names the counter


def count_name(action: str, stream: str = "", *, gui: bool = False) -> str:
    """What a run's counter is called after its number ("12 created", "3 not paid through Stripe", "1 waiting for
    an earlier change to reach Stripe"): the stream's own name for it, else its name everywhere, else the action;
    `gui`: in the window's words ("sent to review")."""
    named = STREAM_COUNT_NAMES.get((stream, action)) or COUNT_NAMES.get(action)
    if named is not None:
        return named
    return COUNT_WORDS.get(action, action) if gui else action


def counts_words(counts: Mapping[str, int], stream: str = "") -> str:
    """Every counter of a run with its number, for the command line: "0 created, 4 linked, 3 not paid through
    Stripe"."""
    return ", ".join(f"{count} {count_name(action, stream)}" for action, count in counts.items())


# --- streams ----------------------------------------------------------------------------------------------------
SOURCE_SYSTEMS = {"cliniko": "Cliniko", "calcom": "Cal.com"}
# What each stream carries, as a practice manager would say it. Streams still being built are named already,
# so their first appearance anywhere in the window reads right.
STREAM_TITLES = {
    "cliniko.patients": "Cliniko patients → Stripe customers",
    "cliniko.products": "Cliniko products → Stripe products and prices",
    "cliniko.invoices": "Cliniko invoices → Stripe payments",
    "cliniko.invoice_mirror": "Cliniko invoices → Stripe invoices (mirror)",
    "calcom.event_types": "Cal.com event types → Stripe products and prices",
    "calcom.bookings": "Cal.com bookings → Stripe customers",
    "calcom.booking_payments": "Cal.com paid bookings → Stripe payments",
    "calcom.reference": "Cal.com details → Stripe notes on linked records",
}
STREAM_NOUNS = {
    "cliniko.patients": "patients",
    "cliniko.products": "products",
    "cliniko.invoices": "invoices",
    "cliniko.invoice_mirror": "mirrored invoices",
    "calcom.event_types": "event types",
    "calcom.bookings": "bookings",
    "calcom.booking_payments": "paid bookings",
    "calcom.reference": "Cal.com details",
    "reconcile": "full comparison",  # the history rows of reconciliations (clinicsync.sync.reconcile_hook)
}
_STREAM_ID = re.compile(r"\b(cliniko|calcom)\.([a-z][a-z_]*)\b")


def stream_noun(stream: str) -> str:
    """'cliniko.patients' → 'patients': the short word, as in "Syncing patients 140/500"."""
    return STREAM_NOUNS.get(stream) or stream.rsplit(".", 1)[-1].replace("_", " ")


def stream_source(stream: str) -> str:
    """'cliniko.patients' → 'Cliniko patients': the records, with the system they come from."""
    system = stream.split(".", 1)[0]
    noun = stream_noun(stream)
    if "." not in stream:  # not a source's records ("reconcile"): the words alone
        return sentence(noun)
    if noun.startswith(SOURCE_SYSTEMS.get(system, "\0")):
        return noun
    return f"{SOURCE_SYSTEMS.get(system, system.capitalize())} {noun}"


def record_words(stream: str) -> str:
    """'cliniko.patients' → 'Cliniko patient': one record of the stream, as in "Cliniko patient 1042"."""
    words = stream_source(stream)
    return words.removesuffix("s") if words.endswith("s") and not words.endswith("ss") else words


def stream_title(stream: str) -> str:
    """'cliniko.patients' → 'Cliniko patients → Stripe customers'."""
    return STREAM_TITLES.get(stream) or stream_source(stream)


# The settings that switch a stream on, as the Settings tab's tick boxes name them (the tab shows these words on
# the boxes, and a schedule switch waiting for one of them names it).
STREAM_SWITCHES = {
    "streams.cliniko.invoices.enabled": "Link each paid Cliniko invoice to the Stripe payment that paid it",
    "cliniko.invoices.mirror": "Copy Cliniko invoices into Stripe as Stripe invoices",
}


def not_running_words(source: str = "", setting: str = "", *, given_at_start: bool = False) -> str:
    """Why a stream does not run (clinicsync.sync.service.why_not_running), in a practice manager's words: the
    source to connect first, or the switch to turn on first."""
    if source:
        return f"Connect {SOURCE_SYSTEMS.get(source, source.capitalize())} first, in the Connections tab."
    if given_at_start:
        return "Turned off when ClinicSync was started, so it can't be turned on here."
    if setting in STREAM_SWITCHES:
        return f"Turn on “{STREAM_SWITCHES[setting]}” first."
    return "Turned off in ClinicSync's settings, so it does not run."


# --- what a stream writes -------------------------------------------------------------------------------------
STRIPE_OBJECTS = {
    "customer": ("customer", "customers"),
    "product": ("product", "products"),
    "price": ("price", "prices"),
    "invoice": ("invoice", "invoices"),
    "invoiceitem": ("invoice line", "invoice lines"),
    "payment": ("payment", "payments"),
    "payment_intent": ("payment", "payments"),
}


def stripe_object_words(kind: str, count: int | None = None) -> str:
    """'customer' → 'customer'; with a count, the count and the right number ('3 customers')."""
    one, many = STRIPE_OBJECTS.get(kind, (kind, kind + "s"))
    return one if count is None else plural(count, one, many)


def stripe_objects_words(kind: str) -> str:
    """'customer' → 'customers': the plural alone, as in "existing Stripe customers"."""
    return STRIPE_OBJECTS.get(kind, (kind, kind + "s"))[1]


# The part a mapping row plays, and (for the streams to come) what a link between two records is.
RULE_ROLES = {
    "": "—",
    "match_key": "Finds the existing Stripe record (a customer by email, a product by name)",
    "cross_ref": "Holds the Cliniko or Cal.com id (links the two records)",
}


def matched_by(stripe_object: str) -> str | None:
    """'customer' → 'email': the field an existing Stripe object of this kind is found by, in words."""
    from clinicsync.mapping.fields import MATCH_KEY_TARGETS

    target = MATCH_KEY_TARGETS.get(stripe_object)
    return target_label(target).lower() if target else None


def rule_role_label(role: str, stripe_object: str = "customer") -> str:
    """A row's special use, in the words of the Stripe object the mapping writes."""
    if role == "match_key":
        by = matched_by(stripe_object)
        return f"Finds existing Stripe {stripe_objects_words(stripe_object)}" + (f" (by {by})" if by else "")
    return RULE_ROLES.get(role, role)


def plan_action_label(action: str, stripe_object: str = "customer", stream: str = "") -> str:
    """A line of the plan shown for approval: what happens to the records counted on it, in Stripe's words (or
    the stream's own name for the counter: invoices not paid through Stripe)."""
    if action == "waiting":  # its change is queued or sent, not yet confirmed; the record is read again after
        return f"{sentence(WAITING_FOR_EARLIER_CHANGE)} (checked again once it has)"
    named = STREAM_COUNT_NAMES.get((stream, action))
    if named is not None:
        return f"{sentence(named)} (nothing sent)"
    many = stripe_objects_words(stripe_object)
    product = stripe_object == "product"
    return {
        "created": f"New Stripe {many} will be created" + (", each with its price" if product else ""),
        "linked": f"Linked to existing Stripe {many}",
        "updated": f"Linked {many} will be updated" + (" (name, price, stock, on sale or archived)" if product else ""),
        "review": "Left for you to review (nothing sent)",
        "failed": "Can't be sent (reported, nothing sent)",
        "skipped": "Skipped: archived, merged or not syncable"
        if stripe_object == "customer"
        else "Skipped: archived or not syncable",
        "unchanged": "Already up to date",
    }.get(action, action)


LINK_ROLES = {
    "customer": "customer",
    "product": "product",
    "price": "price",
    "invoice": "invoice",
    "payment": "payment",
}
OVERFLOWS = {
    "reject": "Don't send the record (it is reported)",
    "truncate": "Shorten it, ending in …",
}

# Stripe fields, as the Stripe Dashboard names them.
TARGET_LABELS = {
    "name": "Name",
    "email": "Email",
    "phone": "Phone",
    "description": "Description",
    "address.line1": "Address line 1",
    "address.line2": "Address line 2",
    "address.city": "City",
    "address.state": "State",
    "address.postal_code": "Postcode",
    "address.country": "Country",
    "shipping.name": "Shipping name",
    "shipping.phone": "Shipping phone",
    "shipping.address.line1": "Shipping address line 1",
    "shipping.address.line2": "Shipping address line 2",
    "shipping.address.city": "Shipping city",
    "shipping.address.state": "Shipping state",
    "shipping.address.postal_code": "Shipping postcode",
    "shipping.address.country": "Shipping country",
    "statement_descriptor": "Statement descriptor",
    "unit_label": "Unit label",
    "footer": "Footer",
    "due_date": "Due date",
    "custom_fields.0.value": "Custom field",
    "amount": "Amount",
    "unit_amount": "Unit amount",
    "quantity": "Quantity",
}
METADATA_PREFIX = "metadata."


def target_label(target: str) -> str:
    """'address.line1' → 'Address line 1'; 'metadata.cliniko_patient_id' → 'Metadata: cliniko_patient_id' (the
    key is shown as written: it is what the Stripe Dashboard shows too)."""
    if target.startswith(METADATA_PREFIX):
        key = target.removeprefix(METADATA_PREFIX)
        return f"Metadata: {key}" if key else "Metadata (name it)"
    return TARGET_LABELS.get(target) or target.replace("_", " ").replace(".", " ").capitalize()


# How a row fills its Stripe field, and each option in words.
TRANSFORMS = {
    "copy": "As it is",
    "join": "Joined together",
    "template": "From a pattern",
    "email": "As an email address",
    "constant": "Always the same value",
    "truncate": "Shortened",
    "phone_e164": "As an international phone number",
    "preferred_phone": "The preferred phone number",
    "local_date": "As a date in the clinic's time zone",
    "minor_units": "As an amount in cents",
    "lookup": "Translated through a table",
    "link_id": "The id of a linked Cliniko record",
}
OPTIONS = {
    ("join", "separator"): "Between the values",
    ("template", "template"): "Pattern",
    ("email", "lowercase"): "Change to lower case",
    ("constant", "value"): "Value",
    ("truncate", "max_chars"): "Keep at most",
    ("truncate", "marker"): "End a shortened value with",
    ("phone_e164", "on_invalid"): "If a number can't be read",
    ("preferred_phone", "prefer"): "Preferred phone type",
    ("preferred_phone", "format"): "Write it",
    ("local_date", "time_zone"): "Time zone",
    ("minor_units", "exponent"): "Decimal places",
    ("lookup", "table"): "Table",
    ("lookup", "default"): "When a value is not in the table",
}
CHOICES = {
    ("phone_e164", "on_invalid", "keep"): "Send it as typed",
    ("phone_e164", "on_invalid", "drop"): "Leave the phone empty",
    ("preferred_phone", "format", "as_entered"): "As typed in Cliniko",
    ("preferred_phone", "format", "e164"): "In international form (+61 …)",
}
SEPARATORS = (  # the usual separators by name: a space typed into a box is invisible
    (" ", "a space"),
    (", ", "a comma and a space"),
    (",", "a comma"),
    (" / ", "a slash"),
    (" - ", "a dash"),
    ("", "nothing"),
)
CLINIC_TIME_ZONE = "The clinic's own time zone"


def transform_label(name: str) -> str:
    return TRANSFORMS.get(name) or name.replace("_", " ").capitalize()


def option_label(transform: str, option: str) -> str:
    return OPTIONS.get((transform, option)) or option.replace("_", " ").capitalize()


def choice_label(transform: str, option: str, value: object) -> str:
    return CHOICES.get((transform, option, str(value))) or str(value)


def separator_label(separator: str) -> str:
    return next((label for value, label in SEPARATORS if value == separator), f"“{separator}”")


# --- reconciliation ---------------------------------------------------------------------------------------------
# Keyed by the values of clinicsync.reconcile.findings' enums (the CSV and the database keep those identifiers).
FINDING_TYPE_LABELS = {
    "missing_in_stripe": "Missing in Stripe",
    "orphaned_in_stripe": "Orphaned in Stripe",
    "field_drift": "Field drift",
    "duplicate": "Duplicate",
    "payment_mismatch": "Payment mismatch",
    "booking_payment_mismatch": "Booking payment mismatch",
}
SEVERITY_LABELS = {"high": "High", "medium": "Medium", "low": "Low"}
FINDING_STATUS_LABELS = {
    "open": "To do",
    "accepted": "Marked as intended",
    "scheduled": "Fix waits for the next sync",
    "fixed": "Fixed",
    "failed": "Fix failed",
}
REPORT_OUTCOME_LABELS = {
    "running": "Running",
    "clean": "Both sides agree",
    "findings": "Differences found",
    "failed": "Incomplete (stopped by a problem)",
    "cancelled": "Incomplete (cancelled)",
}


def finding_type_label(kind: str) -> str:
    return FINDING_TYPE_LABELS.get(str(kind)) or str(kind).replace("_", " ").capitalize()


def severity_label(level: str) -> str:
    return SEVERITY_LABELS.get(str(level)) or str(level).capitalize()


# --- the source's fields --------------------------------------------------------------------------------------
def source_label(name: str, catalogue: FieldCatalogue | None = None) -> str:
    """'first_name' → 'First name' (the catalogue's label); an unknown field as written."""
    entry = catalogue.get(name) if catalogue is not None else None
    if entry is not None:
        return entry.label
    if name.startswith("custom_fields."):
        return f"Custom field {name.removeprefix('custom_fields.')}"
    return name.replace("_", " ").capitalize() if name else "(none)"


def _mid_sentence(label: str) -> str:
    """'Last name' → 'last name' after a '+', but 'DVA card number' and 'Cliniko patient id' keep their capitals."""
    if len(label) > 1 and label[1].islower() and not label.startswith(("Cliniko", "Stripe", "Cal.com")):
        return label[0].lower() + label[1:]
    return label


def sources_phrase(rule: FieldRule, catalogue: FieldCatalogue | None = None) -> str:
    """Where a row's value comes from, in words: 'First name + last name', 'Phone numbers (Mobile first)'."""
    labels = [source_label(source, catalogue) for source in rule.sources]
    options = rule.options
    if rule.transform == "constant":
        return f"always “{options.get('value', '')}”"
    if rule.transform == "template":
        pattern = str(options.get("template", ""))
        for source in rule.sources:
            pattern = pattern.replace("{" + source + "}", "{" + source_label(source, catalogue) + "}")
        return f"the pattern “{pattern}”"
    joined = " + ".join([labels[0], *(_mid_sentence(label) for label in labels[1:])]) if labels else "(no field)"
    extra = {
        "preferred_phone": f"{options.get('prefer', 'Mobile')} first",
        "email": "lower case" if options.get("lowercase") else "",
        "phone_e164": "international form",
        "local_date": "date",
        "minor_units": "in cents",
        "lookup": "translated",
        "truncate": f"at most {options.get('max_chars', '?')} characters",
        "link_id": "its id",
    }.get(rule.transform, "")
    return f"{joined} ({extra})" if extra else joined


def rule_summary(rule: FieldRule, catalogue: FieldCatalogue | None = None) -> str:
    """'First name + last name → Name'."""
    return f"{sources_phrase(rule, catalogue)} → {target_label(rule.target)}"


# --- problems with a mapping, in words --------------------------------------------------------------------------
_QUOTED = r"'([^']*)'"


def problem_text(problem: Problem, mapping: StreamMapping, catalogue: FieldCatalogue | None = None) -> str:
    """A validation problem as the Field mapping tab says it: no rule codes, option or role identifiers, and no
    command to run (the engine's own messages are for the command line and the log)."""
    rule = mapping.rules[problem.row - 1] if 0 < problem.row <= len(mapping.rules) else None
    return sentence(_problem_words(problem, rule, mapping, catalogue))


def _problem_words(
    problem: Problem, rule: FieldRule | None, mapping: StreamMapping, catalogue: FieldCatalogue | None
) -> str:
    message, code = problem.message, problem.rule
    objects = stripe_object_words(mapping.stripe_object, 2).split(" ", 1)[1]
    if code == "clinical-field":
        match = re.match(r"(\S+) \(", message)
        field = source_label(match.group(1), catalogue) if match else "This field"
        return (
            f"{field} is clinical information, which is not sent to Stripe unless you allow it: select the row "
            "and press “Allow clinical field…” to read what that would mean."
        )
    if code == "unknown-source":
        match = re.match(r"no custom field has the token (\S+)", message)
        if match:
            return f"Cliniko has no custom field {match.group(1)} (it may have been deleted or archived)."
        name = message.split(" ", 1)[0]
        return f"“{name}” is not a field of {stream_source(mapping.stream)}."
    if code == "unknown-target":
        what = target_label(rule.target) if rule else "This"
        return f"{what} is not a field ClinicSync can fill in Stripe {objects}."
    if code == "duplicate-target":
        other = re.search(r"row (\d+)", message)
        return f"{target_label(problem_target(rule))} is already filled by row {other.group(1) if other else '?'}."
    if code == "target-conflict":
        parent = re.search(r"inside (\S+),", message)
        whole = target_label(parent.group(1)) if parent else "a field"
        return (
            f"{target_label(problem_target(rule))} is part of {whole}, which another row fills whole: keep one of "
            "the two."
        )
    if code == "metadata-key":
        if "cannot be empty" in message:
            return "Give the metadata field a name."
        if "contains" in message:
            return "A metadata name cannot contain [ or ]."
        return message.replace("metadata key", "The metadata name")
    if code == "cross-ref-target":
        return "The Cliniko id must go into a metadata field: Stripe has no other place for it."
    if code == "match-key-target":
        field = sentence(matched_by(mapping.stripe_object) or "email")
        return f"Only the {field} field can be used to find existing Stripe {objects}."
    if code == "overflow":
        return "This row identifies the record, so it cannot be shortened: choose “Don't send the record”."
    if code == "writeback-echo":
        return "This Cliniko field holds the Stripe id ClinicSync writes back, so it cannot also be sent to Stripe."
    if code == "unknown-transform":
        return "ClinicSync does not know this way of filling a field; choose another."
    if code == "transform-options" and rule is not None:
        return _option_problem(message, rule, catalogue)
    if code == "cross-ref-count":
        found = int(re.search(r"found (\d+)", message).group(1)) if re.search(r"found (\d+)", message) else 0
        return (
            "Exactly one row must hold the Cliniko id (the special use “Holds the Cliniko id”); "
            f"{'none does' if not found else plural(found, 'row does', 'rows do')}."
        )
    if code == "match-key":
        found = int(re.search(r"found (\d+)", message).group(1)) if re.search(r"found (\d+)", message) else 0
        kind = mapping.stripe_object
        role = rule_role_label("match_key", kind).split(" (")[0]
        return (
            f"Exactly one row, the {matched_by(kind) or 'match key'}, must find existing Stripe "
            f"{stripe_objects_words(kind)} (the special use “{role}”); "
            f"{'none does' if not found else plural(found, 'row does', 'rows do')}."
        )
    if code == "scope":
        if "needs a date" in message:
            return "Choose the date to sync from."
        return "“Patients seen in the last …” works for Cliniko patients only; choose another set of records."
    if code == "writeback-field":
        if "no custom field is chosen" in message:
            return "Choose the Cliniko custom field to write the Stripe id into."
        return message[:1].upper() + message[1:] + "."
    if code in ("time-zone", "archived-marker", "metadata-count"):
        return message.replace("metadata key", "metadata name")
    return for_gui(message)


def problem_target(rule: FieldRule | None) -> str:
    return rule.target if rule is not None else ""


def _option_problem(message: str, rule: FieldRule, catalogue: FieldCatalogue | None) -> str:
    how = transform_label(rule.transform)
    if match := re.fullmatch(rf"\w+ has no option {_QUOTED} \(its options: .*\)", message):
        return f"“{how}” has no setting “{match.group(1)}”: remove it under Advanced."
    if match := re.fullmatch(rf"\w+ needs the option {_QUOTED}", message):
        return f"Fill in “{option_label(rule.transform, match.group(1))}”."
    if match := re.fullmatch(rf"option {_QUOTED} must be (?:a|one of) (.*)", message):
        label = option_label(rule.transform, match.group(1))
        return f"“{label}” has a value ClinicSync can't use ({match.group(2)}); choose it again."
    if re.fullmatch(r"\w+ needs at least one source field", message):
        return "Choose at least one Cliniko field."
    if match := re.fullmatch(r"\w+ takes (\d+) source field\(s\), not (\d+)", message):
        wanted = int(match.group(1))
        return "This takes no Cliniko field." if wanted == 0 else f"Choose exactly {plural(wanted, 'Cliniko field')}."
    if message.startswith("the template names no field"):
        return "The pattern must name at least one Cliniko field, like {first_name}."
    if message.startswith("the sources must be the template's fields"):
        return "The fields must be the ones the pattern names, in its order."
    if message.startswith("max_chars must be at least"):
        return "Keep at least 1 character."
    if match := re.fullmatch(rf"unknown time zone {_QUOTED}", message):
        return f"“{match.group(1)}” is not a time zone ClinicSync knows; pick one from the list."
    if message == "the lookup table is empty":
        return "Add at least one row to the table."
    return for_gui(message)


# --- messages written for the command line, said for the window -------------------------------------------------
# Clauses that tell a person to run a command: the window has a button for each of these.
_COMMAND_CLAUSES = (
    re.compile(r"\s*\(`clinicsync[^`]*`\)"),  # "review the plan (`clinicsync plan show`)"
    re.compile(r"[,;]?\s*(?:or\s+)?(?:run|with|use|e\.g\.)\s+`clinicsync[^`]*`(?:\s+(?:first|shows them))?"),
    re.compile(r"[,;]\s*`clinicsync[^`]*`[^.;]*"),  # "; `clinicsync review list` shows them"
)
_ROLE_CLAUSES = re.compile(r"\s*\(role (?:cross_ref|match_key)\)")
_RULE_CODES = re.compile(r" \[[a-z][a-z-]*\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ENV_KEY = re.compile(r"(\w+) comes from the environment variable CLINICSYNC_\w+.*", re.DOTALL)
GUI_APPROVAL_MESSAGE = (
    "This is the first sync to a LIVE Stripe account, so nothing was written yet: check the plan ClinicSync "
    "shows and approve it, and the sync writes exactly that."
)


def for_gui(message: object) -> str:
    """A message from the engine, the runner or a store, worded for the desktop app: commands to run become the
    window's own buttons (or go), environment variables are not named, internal stream and role identifiers
    become words, rule codes go. Messages that need none of this come back unchanged."""
    text = "" if message is None else str(message)
    if "`clinicsync plan" in text and "LIVE Stripe account" in text:
        return GUI_APPROVAL_MESSAGE
    if _ENV_KEY.match(text):
        return "This key was given to ClinicSync when it was started, so it can't be changed or removed here."
    for clause in _COMMAND_CLAUSES:
        text = clause.sub("", text)
    text = _ROLE_CLAUSES.sub("", _RULE_CODES.sub("", text))
    text = _STREAM_ID.sub(lambda m: stream_source(m.group(0)), text)
    # Whatever still names a command or an environment variable is for the command line only: drop that sentence.
    lines = []
    for line in text.split("\n"):
        sentences = _SENTENCE_END.split(line)
        kept = [s for s in sentences if "`clinicsync" not in s and "CLINICSYNC_" not in s]
        if sentences and not kept:
            continue
        lines.append(" ".join(kept))
    text = "\n".join(lines).strip()
    return re.sub(r"[ \t]+([,.;:])", r"\1", re.sub(r"(?<=\S)[ \t]{2,}", " ", text))


def configured_outside(sandbox: bool) -> str:
    """How a key or setting given to the process (not saved by ClinicSync) is described."""
    return "Provided by the sandbox clinic" if sandbox else "Given to ClinicSync when it was started"
