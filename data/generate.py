"""Generate the project's own credit-dispute example datasets, deterministically.

Why a generator instead of hand-written files: the original scripts' data (`../shared/seed-data`)
repeats a handful of rows hundreds of times and leaks validation rows into train, so any metric
measured on it says nothing. Here every row is composed from independent parts (account facts, a
consumer's claim, the evidence at hand, a template), the label follows from the parts by a stated
rule, duplicates are dropped across all splits, and the classifier's test split is rendered only
with templates and claim/evidence phrasings that train never uses, so test accuracy measures
generalisation rather than memorisation.

    python data/generate.py            # rewrites data/*.jsonl byte-identically
    python data/generate.py --check    # exits 1 if the committed files differ from a fresh run

Labelling rule of the classifier (the same rule labels the SFT cases):
- insufficient_information: identifying facts are missing (account number, dates, creditor or
  amount) and the consumer names no specific error;
- eligible: a specific, factual reporting error is claimed and documentation is at hand;
- conditionally_eligible: a specific error is claimed without documentation yet, or the consumer
  only suspects an error and must verify it first;
- not_eligible: the item is reported accurately (the consumer wants it gone for other reasons).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SEED = 20240611
DATA_DIR = Path(__file__).resolve().parent
LABELS = ("eligible", "conditionally_eligible", "not_eligible", "insufficient_information")
DISPLAY = {
    "eligible": "Eligible",
    "conditionally_eligible": "Conditionally Eligible",
    "not_eligible": "Not Eligible",
    "insufficient_information": "Insufficient Information",
}
COUNTS = {"classifier": (1200, 150, 150), "pairs": (900, 100), "sft": (480, 100)}


def split_pool(items: list[str]) -> tuple[list[str], list[str]]:
    """The last third of every phrasing pool is held out for the classifier's test split."""
    k = max(1, len(items) // 3)
    return items[:-k], items[-k:]


# --- account facts ------------------------------------------------------------------------------

ACCOUNT_TYPES = [
    "Credit Card", "Revolving", "Installment Loan", "Auto Loan", "Student Loan", "Mortgage",
    "Medical Collection", "Collection", "Charge-Off", "Personal Loan", "Retail Store Card",
    "Home Equity Line", "Utility Account", "Cell Phone Account", "Payday Loan", "Rental Debt",
    "Line of Credit",
]
STATUSES = [
    "Open", "Closed", "Paid", "Unpaid", "Charged Off", "In Collections", "Settled", "Current",
    "30 Days Late", "60 Days Late", "90 Days Late", "Transferred", "Closed by Grantor", "Paid in Full",
]
NEGATIVE_STATUSES = ["Unpaid", "Charged Off", "In Collections", "30 Days Late", "60 Days Late", "90 Days Late"]
GOOD_STATUSES = ["Open", "Closed", "Paid", "Current", "Paid in Full"]
BUREAUS = ["Equifax", "Experian", "TransUnion"]
CREDITORS = [
    "Northwind Bank", "Summit Auto Finance", "Harbor Medical Billing", "Apex Recovery Group",
    "Blue Ridge Credit Union", "Crescent Card Services", "Lakeview Mortgage", "Pioneer Student Lending",
    "Metro Wireless", "Cedar Utilities", "Granite Collections", "Sunrise Retail Card",
    "Riverbend Lending", "Keystone Financial", "Oakmont Property Management", "Evergreen Health Partners",
    "Atlas Personal Loans", "Beacon Cash Advance", "Silverline Bank", "Frontier Home Equity",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]


def fmt_amount(rng: random.Random) -> str:
    n = rng.choice([rng.randrange(50, 1000, 5), rng.randrange(1000, 9000, 25), rng.randrange(9000, 60000, 250)])
    return rng.choice([f"{n}", f"${n:,}", f"${n:,}.00", f"USD {n}"])


def fmt_date(rng: random.Random, *, old: bool = False) -> str:
    year = rng.randint(2009, 2016) if old else rng.randint(2019, 2025)
    m = rng.randint(1, 12)
    return rng.choice([f"{year}-{m:02d}", f"{m:02d}/{year}", f"{MONTHS[m - 1][:3]} {year}", f"{MONTHS[m - 1]} {year}"])


# --- claims: what the consumer says is wrong (label-bearing) -----------------------------------


@dataclass(frozen=True)
class Claim:
    key: str
    kind: str  # "specific" | "suspected" | "accurate" | "none"
    short: tuple[str, ...]  # a field value, for structured templates
    sentence: tuple[str, ...]  # first person, for free-text templates
    types: tuple[str, ...] = ()  # restrict the account type (e.g. inquiries)
    statuses: tuple[str, ...] = ()  # restrict the status so the facts agree with the claim
    old_date: bool = False  # the claim is about age, so the date must be old
    docs: tuple[str, ...] = ()  # documents that would prove this claim


def C(key: str, kind: str, short: list[str], sentence: list[str], **kw) -> Claim:
    """Shorthand that keeps the claim table below readable (lists become tuples)."""
    return Claim(key, kind, tuple(short), tuple(sentence), **{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


CLAIMS = [
    # specific, factual reporting errors
    C("not_mine", "specific",
      ["Not mine", "Account not recognized", "Never opened this account", "Belongs to someone else", "Unknown account, not my debt", "No relationship with creditor"],
      ["This account is not mine.", "I never opened an account with {creditor}.", "I have never done business with {creditor}.", "This is someone else's account on my file.", "I have no relationship with {creditor} at all.", "That debt belongs to another person with a similar name."],
      docs=["creditor's written confirmation", "proof of my address history", "letter from the creditor denying any account"]),
    C("identity_theft", "specific",
      ["Identity theft", "Fraudulent account", "Opened without my consent", "Fraud by an identity thief", "Account opened using stolen identity", "Unauthorized account from ID theft"],
      ["An identity thief opened this account.", "Someone stole my identity and opened this {type_l}.", "This account is fraud and I never authorized it.", "My identity was stolen and this account came from it.", "A thief used my information to open this with {creditor}.", "I was a victim of identity theft and this is one of the accounts."],
      docs=["FTC identity theft report", "police report", "IdentityTheft.gov affidavit"]),
    C("wrong_balance", "specific",
      ["Wrong balance", "Balance reported incorrectly", "Incorrect amount owed", "Balance higher than actual", "Reported balance does not match statements", "Inflated balance"],
      ["The balance is wrong; I owe far less than {amount}.", "They report {amount} but my statements show a different balance.", "The amount owed is reported incorrectly.", "The balance listed is higher than what I actually owe.", "My last statement does not match the balance they report.", "The reported amount includes charges I already paid off."],
      statuses=["Open", "Unpaid", "In Collections", "Charged Off", "Current"], docs=["bank statement", "account statements", "creditor's balance letter"]),
    C("paid_unpaid", "specific",
      ["Paid but reported unpaid", "Paid in full, still shows a balance", "Shows unpaid after payoff", "Payoff not reflected", "Still listed as owing after final payment", "Balance should be zero"],
      ["I paid this off but it still shows as unpaid.", "I paid the account in full and it still reports a balance.", "The payoff never made it onto my report.", "After my final payment it is still listed as owing.", "It should show a zero balance because I paid it.", "They got my last payment but still report money owed."],
      statuses=["Unpaid", "In Collections", "Charged Off", "Open"], docs=["payoff letter", "paid-in-full letter", "cancelled check", "payment receipts"]),
    C("duplicate", "specific",
      ["Duplicate account", "Reported twice", "Same debt listed two times", "Double reporting", "Duplicate tradeline", "Listed by both original creditor and collector with a balance"],
      ["This debt appears twice on my report.", "The same account is listed two times.", "It is reported by both {creditor} and a collector, each with a balance.", "I see the exact same account twice.", "The same debt is being double reported.", "There are two entries for one single account."],
      docs=["copies of both report entries", "account statements", "transfer notice from the creditor"]),
    C("wrong_dates", "specific",
      ["Incorrect dates", "Wrong date of first delinquency", "Date opened is wrong", "Delinquency date misreported", "Dates do not match my records", "Re-aged account"],
      ["The dates on this account are wrong.", "The date of first delinquency is incorrect.", "They list the wrong opening date.", "The delinquency date was changed to make it look newer.", "The dates reported don't match my records.", "The account was re-aged with a later date."],
      docs=["account statements", "original contract", "collection notice showing the first delinquency"]),
    C("obsolete", "specific",
      ["Older than seven years", "Past the reporting period", "Should have aged off", "Obsolete item", "Beyond 7-year limit", "Outdated negative item"],
      ["This is more than seven years old and should be gone.", "The reporting period for this ended years ago.", "This item should have aged off my report.", "It is an obsolete negative item still being reported.", "The delinquency is over seven years old.", "This old debt is past the time it can be reported."],
      statuses=NEGATIVE_STATUSES, old_date=True, docs=["old statements showing the delinquency date", "original charge-off notice", "collection notice with dates"]),
    C("wrong_status", "specific",
      ["Incorrect status", "Status misreported", "Shows late but was paid on time", "Wrong payment status", "Reported as charged off in error", "Late marks reported in error"],
      ["The status is wrong; I always paid on time.", "They show it as late but every payment was on time.", "It is marked charged off but it never was.", "The payment status reported is incorrect.", "There are late marks for months I paid on time.", "The account status doesn't reflect what really happened."],
      statuses=NEGATIVE_STATUSES, docs=["bank statement", "payment receipts", "cancelled check"]),
    C("bankruptcy", "specific",
      ["Discharged in bankruptcy, still shows balance", "Included in bankruptcy", "Should show discharged", "Bankruptcy discharge not reflected", "Balance after discharge", "Not updated after Chapter 7"],
      ["This debt was discharged in my bankruptcy but still shows a balance.", "It was included in my bankruptcy and should show as discharged.", "The bankruptcy discharge isn't reflected on this account.", "They still report a balance after my Chapter 7 discharge.", "This was wiped out in bankruptcy yet shows as owed.", "My discharged debt is still being reported as active."],
      statuses=["Unpaid", "In Collections", "Charged Off", "Open"], docs=["bankruptcy discharge order", "court discharge papers", "bankruptcy schedule listing the debt"]),
    C("unauthorized_inquiry", "specific",
      ["Unauthorized inquiry", "Inquiry without permission", "Never applied with this lender", "No application made", "Inquiry I did not authorize", "Pulled without consent"],
      ["I never applied for credit with {creditor}, yet there is an inquiry.", "Nobody asked my permission for this credit check.", "This inquiry happened without my consent.", "I did not authorize {creditor} to pull my credit.", "There is a hard pull from a lender I never contacted.", "I never filled out an application there."],
      types=["Hard Inquiry"], statuses=["Open", "Closed"], docs=["letter showing no application was made", "creditor's written confirmation", "FTC identity theft report"]),
    # the consumer only suspects an error: verify first
    C("unsure_history", "suspected",
      ["Payment history unknown", "Unsure about late payments", "Payment history not verified", "Not sure if payments were late", "Need to check payment history", "History unclear"],
      ["I'm not sure whether my payments were late; I need to check.", "I don't know if the payment history is right.", "I can't tell if those late marks are accurate yet.", "I have to look at my old records to see if I paid late.", "The payment history might be wrong, I haven't confirmed.", "I honestly don't remember if I paid those months on time."]),
    C("maybe_balance", "suspected",
      ["Balance may be wrong", "Possibly incorrect balance", "Balance looks off", "Amount might be too high", "Balance seems higher than expected", "Might owe less"],
      ["The balance might be wrong but I need to verify it.", "The amount looks a bit high; I want to double-check.", "I think the balance could be off.", "I'm not certain the balance is right.", "It seems like they report more than I owe, I'm not sure.", "The balance may be incorrect, I still have to compare statements."]),
    C("maybe_not_mine", "suspected",
      ["May not be mine", "Don't remember this account", "Unsure if account is mine", "Possibly not my account", "Do not recognize, checking", "Might be someone else's"],
      ["I don't remember opening this account.", "I'm not sure this account is mine.", "This might not be my account but I need to check.", "I don't recognize it, though maybe it's an old card.", "It could be a relative's account, I'm not sure.", "I might have opened it years ago, I honestly can't recall."]),
    # accurate reporting: no basis for a dispute
    C("paid_as_agreed", "accurate",
      ["Paid as agreed, no late payments", "Positive account, reporting correctly", "Accurate, in good standing", "Late payments: 0, account current", "Correct and current", "Good standing, info accurate"],
      ["The account is paid as agreed with no late payments, but I'd like it gone.", "Everything on this account is correct and current.", "It's a positive account and it reports accurately.", "There are no late payments and the details are right.", "The information is accurate; I just don't want it listed.", "It's in good standing and reported correctly."],
      statuses=GOOD_STATUSES),
    C("authorized_inquiry", "accurate",
      ["Authorized inquiry", "I applied for this credit", "Inquiry from my own application", "Permitted inquiry", "Applied and approved", "Inquiry I consented to"],
      ["I did apply for credit with {creditor}, but I want the inquiry removed.", "I authorized this inquiry when I applied for a loan.", "The inquiry came from my own application.", "I gave permission for the credit check.", "I applied and was approved, I just don't like the inquiry.", "I consented to this inquiry but it lowers my score."],
      types=["Hard Inquiry"], statuses=["Open", "Closed"]),
    C("confirmed_late", "accurate",
      ["Late payment was accurate", "I did pay late", "Late payment confirmed", "Missed payment is correct", "Late but reported correctly", "Delinquency is accurate"],
      ["I did pay late that month, but I want it removed.", "The late payment is real; I missed that due date.", "I admit I was late, can it come off?", "I know I missed the payment, it is reported correctly.", "Yes I was late but it's hurting my score.", "The delinquency happened; I'd still like it deleted."],
      statuses=["30 Days Late", "60 Days Late", "90 Days Late", "Charged Off"]),
    C("score_only", "accurate",
      ["Want it removed to raise score", "Hurts my score", "Just want it deleted", "Removal for score improvement", "Negative but accurate", "Accurate, want deletion"],
      ["The account is accurate but it's dragging my score down.", "I just want this removed so my score goes up.", "Nothing is wrong with it, I only want it deleted.", "I'd like it off my report to qualify for a mortgage.", "It's negative and accurate, but I want it gone.", "I owe this debt, but I want it removed anyway."]),
    C("balance_correct", "accurate",
      ["Debt is mine, balance correct", "Balance matches my records", "Amount owed is right", "Owe this amount", "Correct balance, no error", "Debt acknowledged"],
      ["The debt is mine and the balance matches my records.", "I do owe this amount; it is right.", "The balance is correct according to my statements.", "I recognize the debt and the amount is accurate.", "There is no error in what they report.", "I owe exactly what they show."]),
    # nothing specific and facts missing
    C("unspecified", "none",
      ["No reason given", "Something looks wrong", "Unspecified", "Not sure what is wrong", "General question", "Reason not provided"],
      ["There's an account on my report, can I dispute it?", "Something on my credit report looks off.", "I want to dispute an item but I'm not sure what's wrong.", "Can this be disputed? I don't have the details.", "I saw an entry I want to ask about.", "Is there anything I can do about this item?"]),
]

# Some documents prove several claims: one held out for any claim is held out for all.
HELD_OUT_DOCS = frozenset(d for c in CLAIMS if c.docs for d in split_pool(list(c.docs))[1])
assert all(set(c.docs) - HELD_OUT_DOCS and set(c.docs) & HELD_OUT_DOCS for c in CLAIMS if c.docs), "every claim needs seen and held-out documents"
# Structured "no documentation" values and free-text sentences.
NO_EVIDENCE_SHORT = ["None", "Not yet", "Pending", "No documents", "Awaiting statements", "Not available"]
NO_EVIDENCE_SENT = [
    "I don't have any paperwork yet.", "I haven't found my records yet.", "I still need to request statements.",
    "I have no documents right now.", "My paperwork is somewhere, I haven't located it.", "I'm waiting on copies of my statements.",
]
HAS_EVIDENCE_SENT = [
    "I have a copy of the {doc}.", "I can attach the {doc}.", "I kept the {doc}.",
    "I have the {doc} to prove it.", "The {doc} backs this up.", "My {doc} shows the truth.",
]
MISSING_SENT = [
    "The entry has no account number and no dates.", "I can't see an account number or when it was reported.",
    "There is no creditor name or date on it.", "The report doesn't list an account number or a date.",
    "Dates and the account number are blank.", "It shows no creditor, amount or date.",
]


# --- templates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    claim: Claim
    type: str
    status: str
    amount: str  # "" when missing
    bureau: str
    creditor: str  # "" when missing
    date: str  # "" when missing
    doc: str | None  # evidence document, None when there is none
    acct_missing: bool


@dataclass(frozen=True)
class Phrasings:
    """The phrasing pools one split may draw from (train/valid: seen pools; test: held-out)."""

    claim_short: dict[str, list[str]]
    claim_sentence: dict[str, list[str]]
    no_ev_short: list[str]
    no_ev_sent: list[str]
    has_ev_sent: list[str]
    missing_sent: list[str]


def _phrasings(held_out: bool) -> Phrasings:
    pick = (lambda xs: split_pool(list(xs))[1]) if held_out else (lambda xs: split_pool(list(xs))[0])
    return Phrasings(
        claim_short={c.key: pick(c.short) for c in CLAIMS},
        claim_sentence={c.key: pick(c.sentence) for c in CLAIMS},
        no_ev_short=pick(NO_EVIDENCE_SHORT),
        no_ev_sent=pick(NO_EVIDENCE_SENT),
        has_ev_sent=pick(HAS_EVIDENCE_SENT),
        missing_sent=pick(MISSING_SENT),
    )


def _fill(text: str, c: Case) -> str:
    return text.format(creditor=c.creditor or "the creditor", type_l=c.type.lower(), amount=c.amount or "the amount")


def _parts(c: Case, p: Phrasings, rng: random.Random) -> dict[str, str]:
    """Every phrase a template may need, drawn once so templates stay simple."""
    ev_short = c.doc if c.doc else rng.choice(p.no_ev_short)
    if c.doc:
        ev_sent = rng.choice(p.has_ev_sent).format(doc=c.doc)
    elif c.claim.kind in ("specific", "suspected"):
        ev_sent = rng.choice(p.no_ev_sent)
    else:
        ev_sent = ""
    missing = c.acct_missing or not (c.creditor and c.date and c.amount)
    return {
        "type": c.type, "type_l": c.type.lower(), "status": c.status, "status_l": c.status.lower(),
        "bureau": c.bureau,
        "amount": c.amount or "Unknown", "amount_t": c.amount or "an unknown amount",
        "creditor": c.creditor or "Not listed", "creditor_t": c.creditor or "an unnamed creditor",
        "date": c.date or "Unknown", "acct": "Missing" if c.acct_missing else f"****{rng.randint(1000, 9999)}",
        "claim": rng.choice(p.claim_short[c.claim.key]),
        "claim_s": _fill(rng.choice(p.claim_sentence[c.claim.key]), c),
        "ev": ev_short, "ev_s": ev_sent,
        "missing_s": rng.choice(p.missing_sent) if missing else "",
    }


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(*sentences: str) -> str:
    return " ".join(s for s in sentences if s)


Template = Callable[[dict[str, str]], str]

TRAIN_TEMPLATES: list[Template] = [
    lambda d: f"Account Type: {d['type']} | Status: {d['status']} | Balance: {d['amount']} | Bureau: {d['bureau']} | Account Number: {d['acct']} | Dispute Reason: {d['claim']} | Evidence: {d['ev']} | Last Updated: {d['date']}",
    lambda d: f"Bureau: {d['bureau']} | Creditor: {d['creditor']} | Type: {d['type']} | Status: {d['status']} | Amount: {d['amount']} | Issue: {d['claim']} | Documentation: {d['ev']} | Opened: {d['date']} | Acct #: {d['acct']}",
    lambda d: f"{d['type']} ({d['creditor']}) - {d['status']} - balance {d['amount']} - reported to {d['bureau']}, last update {d['date']}, account no. {d['acct']}. Reason: {d['claim']}. Proof: {d['ev']}.",
    lambda d: _join(f"My {d['bureau']} report shows {_a(d['type_l'])} from {d['creditor_t']} with a balance of {d['amount_t']}, status {d['status_l']}.", d["missing_s"], d["claim_s"], d["ev_s"]),
    lambda d: _join(d["claim_s"], f"It's {_a(d['status_l'])} {d['type_l']} with {d['creditor_t']} for {d['amount_t']} on my {d['bureau']} file.", d["missing_s"], d["ev_s"]),
]
# Used only for the test split: formats a model trained on the others has never seen.
TEST_TEMPLATES: list[Template] = [
    lambda d: f"creditor={d['creditor']}; account={d['type']}; status={d['status']}; balance={d['amount']}; bureau={d['bureau']}; acct={d['acct']}; date={d['date']}; reason={d['claim']}; docs={d['ev']}",
    lambda d: _join(f"Hi, I pulled my credit from {d['bureau']} and found {d['creditor_t']}'s {d['type_l']} listed as {d['status_l']} for {d['amount_t']}.", d["missing_s"], d["claim_s"], d["ev_s"], "What can I do?"),
    lambda d: f"Tradeline review: {d['creditor']} / {d['type']} / {d['status']} / {d['amount']} / {d['bureau']} / reported {d['date']} / acct {d['acct']}. Consumer states: {d['claim']}. Supporting documents: {d['ev']}.",
]


def make_case(label: str, rng: random.Random, *, held_out: bool = False) -> Case:
    if label == "insufficient_information":
        claims = [c for c in CLAIMS if c.kind == "none"]
    elif label == "not_eligible":
        claims = [c for c in CLAIMS if c.kind == "accurate"]
    elif label == "eligible":
        claims = [c for c in CLAIMS if c.kind == "specific"]
    else:  # conditionally eligible: a specific claim without documents, or a suspicion
        claims = [c for c in CLAIMS if c.kind in ("specific", "suspected")]
    claim = rng.choice(claims)
    docs = [d for d in claim.docs if (d in HELD_OUT_DOCS) == held_out]
    type_ = rng.choice(claim.types or ACCOUNT_TYPES)
    status = rng.choice(claim.statuses or STATUSES)
    creditor, amount, date = rng.choice(CREDITORS), fmt_amount(rng), fmt_date(rng, old=claim.old_date)
    if type_ == "Hard Inquiry":
        amount = rng.choice(["0", "$0", "$0.00", "USD 0"])  # an inquiry carries no balance
    acct_missing = False
    if label == "insufficient_information":
        # at least two identifying facts are missing, so no assessment is possible
        missing = rng.sample(["acct", "creditor", "date", "amount"], k=rng.randint(2, 4))
        acct_missing = "acct" in missing
        creditor = "" if "creditor" in missing else creditor
        date = "" if "date" in missing else date
        amount = "" if "amount" in missing else amount
        status = rng.choice(["Unknown", status])
    doc = rng.choice(docs) if label == "eligible" else None
    return Case(label, claim, type_, status, amount, rng.choice(BUREAUS), creditor, date, doc, acct_missing)


def classifier_rows(rng: random.Random, n: int, *, test: bool, seen: set[str]) -> list[dict]:
    templates = TEST_TEMPLATES if test else TRAIN_TEMPLATES
    phr = _phrasings(held_out=test)
    rows: list[dict] = []
    i = 0
    while len(rows) < n:
        label = LABELS[i % len(LABELS)]  # exact balance: labels take turns
        case = make_case(label, rng, held_out=test)
        text = rng.choice(templates)(_parts(case, phr, rng))
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": label})
        i += 1
    rng.shuffle(rows)
    return rows


# --- embeddings pairs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    key: str
    kind: str  # "item": something on a report; "tool": a law, process or letter
    names: tuple[str, ...]  # noun phrases with article ("a hard inquiry")
    title: str  # short title ("Hard inquiry")
    actions: tuple[str, ...] = ()  # tools: verb phrases ("send a debt validation letter")


ITEMS = [
    Concept("hard_inquiry", "item", ("a hard inquiry", "a hard credit pull", "a hard credit check"), "Hard inquiry"),
    Concept("charge_off", "item", ("a charge-off", "a charged-off account", "a written-off debt"), "Charge-off"),
    Concept("collection", "item", ("a collection account", "a debt in collections", "a third-party collection"), "Collection account"),
    Concept("medical_collection", "item", ("a medical collection", "an unpaid medical bill in collections", "medical debt on a credit report"), "Medical collection"),
    Concept("late_payment", "item", ("a late payment", "a 30-day late mark", "a missed payment record"), "Late payment"),
    Concept("bankruptcy", "item", ("a bankruptcy", "a Chapter 7 filing", "a bankruptcy public record"), "Bankruptcy"),
    Concept("repossession", "item", ("a repossession", "a repossessed car loan", "a vehicle repossession"), "Repossession"),
    Concept("foreclosure", "item", ("a foreclosure", "a home foreclosure", "a foreclosed mortgage"), "Foreclosure"),
    Concept("closed_account", "item", ("a closed account", "an account closed in good standing", "a closed credit card"), "Closed account"),
    Concept("student_default", "item", ("a defaulted student loan", "a student loan in default", "federal student loan default"), "Student loan default"),
    Concept("settled_account", "item", ("a settled account", "a debt settled for less", "an account paid as settled"), "Settled account"),
    Concept("judgment", "item", ("a civil judgment", "a court judgment for debt", "a judgment from a lawsuit"), "Civil judgment"),
    Concept("authorized_user", "item", ("an authorized user account", "a card where I'm an authorized user", "an authorized-user tradeline"), "Authorized user account"),
    Concept("duplicate_tradeline", "item", ("a duplicate tradeline", "the same debt reported twice", "a double-reported account"), "Duplicate tradeline"),
    Concept("soft_inquiry", "item", ("a soft inquiry", "a soft credit pull", "a promotional inquiry"), "Soft inquiry"),
    Concept("payday_loan", "item", ("a payday loan", "a short-term cash advance loan", "a payday lender account"), "Payday loan"),
]
TOOLS = [
    Concept("metro2", "tool", ("Metro 2", "the Metro 2 format", "the Metro 2 reporting standard"), "Metro 2 format",
            ("check a tradeline against Metro 2", "use Metro 2 codes in a dispute")),
    Concept("mov", "tool", ("a method of verification request", "an MOV request", "asking for the method of verification"), "Method of verification",
            ("request the method of verification", "ask a bureau how it verified an item")),
    Concept("validation", "tool", ("a debt validation letter", "a debt verification request", "a validation notice to a collector"), "Debt validation letter",
            ("send a debt validation letter", "ask a collector to validate a debt")),
    Concept("fcra", "tool", ("the Fair Credit Reporting Act", "the FCRA", "federal credit reporting law"), "FCRA",
            ("use my FCRA rights in a dispute", "cite the FCRA when disputing")),
    Concept("fdcpa", "tool", ("the Fair Debt Collection Practices Act", "the FDCPA", "debt collection law"), "FDCPA",
            ("use the FDCPA against a collector", "report a collector for breaking the FDCPA")),
    Concept("cfpb", "tool", ("a CFPB complaint", "a complaint to the Consumer Financial Protection Bureau", "a consumer bureau complaint"), "CFPB complaint",
            ("file a CFPB complaint", "complain to the Consumer Financial Protection Bureau")),
    Concept("freeze", "tool", ("a credit freeze", "a security freeze", "freezing my credit file"), "Credit freeze",
            ("place a credit freeze", "freeze my credit at the bureaus")),
    Concept("fraud_alert", "tool", ("a fraud alert", "an initial fraud alert", "an extended fraud alert"), "Fraud alert",
            ("add a fraud alert", "put a fraud alert on my file")),
    Concept("goodwill", "tool", ("a goodwill letter", "a goodwill adjustment request", "a goodwill deletion letter"), "Goodwill letter",
            ("write a goodwill letter", "ask a creditor for a goodwill adjustment")),
    Concept("pay_for_delete", "tool", ("a pay-for-delete agreement", "pay for delete", "a deletion-for-payment deal"), "Pay for delete",
            ("negotiate pay for delete", "offer payment in exchange for deletion")),
    Concept("investigation", "tool", ("the 30-day dispute investigation", "a bureau reinvestigation", "the dispute investigation period"), "Dispute investigation",
            ("track a bureau's dispute investigation", "follow up on a dispute after 30 days")),
    Concept("id_theft_report", "tool", ("an identity theft report", "an FTC identity theft report", "an IdentityTheft.gov report"), "Identity theft report",
            ("file an identity theft report", "report identity theft to the FTC")),
    Concept("utilization", "tool", ("credit utilization", "the credit utilization ratio", "revolving utilization"), "Credit utilization",
            ("lower my credit utilization", "bring my utilization ratio down")),
    Concept("statute_limitations", "tool", ("the statute of limitations on debt", "the time limit to sue for a debt", "a time-barred debt"), "Statute of limitations",
            ("check whether a debt is time-barred", "find the statute of limitations for my debt")),
    Concept("mixed_file", "tool", ("a mixed credit file", "a merged file with someone else's data", "a mixed file error"), "Mixed file",
            ("fix a mixed credit file", "separate my file from someone else's")),
    Concept("annual_report", "tool", ("a free annual credit report", "AnnualCreditReport.com", "my free weekly credit report"), "Free credit report",
            ("get my free credit report", "order my reports from all three bureaus")),
]
# Valid concepts never appear in train, so retrieval metrics measure unseen topics.
VALID_CONCEPTS = {"foreclosure", "settled_account", "payday_loan", "mixed_file", "fraud_alert", "statute_limitations"}

ITEM_INTENTS: dict[str, tuple[list[str], list[str]]] = {
    # intent: (question stems using {n}, short titles using {t})
    "define": (["What is {n}?", "What does {n} mean on a credit report?", "Can you explain {n} in plain terms?", "How would you define {n}?", "What counts as {n}?"],
               ["{t} meaning", "{t} definition", "{t} explained"]),
    "duration": (["How long does {n} stay on my credit report?", "When will {n} fall off my report?", "How many years is {n} reported?", "Does {n} ever drop off my credit history?"],
                 ["{t} reporting period", "How long {t_l} stays", "{t} time on report"]),
    "impact": (["How much does {n} hurt my credit score?", "Will {n} lower my score?", "What effect does {n} have on my credit?", "Is {n} bad for my credit score?"],
               ["{t} score impact", "{t} effect on credit", "Score damage from {t_l}"]),
    "dispute": (["Can I dispute {n}?", "When is {n} eligible for a dispute?", "What makes {n} disputable?", "Is it possible to challenge {n} with the bureaus?"],
                ["{t} dispute eligibility", "Disputing {t_l}", "{t} dispute rules"]),
    "remove": (["How do I get {n} removed?", "Is there a way to delete {n} from my report?", "What steps remove {n}?", "Can {n} be taken off my credit file?"],
               ["{t} removal", "Remove {t_l}", "Deleting {t_l}"]),
}
TOOL_INTENTS: dict[str, tuple[list[str], list[str]]] = {
    "define": (["What is {n}?", "Can you explain {n}?", "What does {n} mean?", "What is the purpose of {n}?", "Why does {n} matter?"],
               ["{t} meaning", "{t} definition", "{t} explained"]),
    "how": (["How do I {a}?", "What are the steps to {a}?", "Can you walk me through how to {a}?", "What's the best way to {a}?"],
            ["How to {a}", "Steps to {a}", "Guide: {a}"]),
}


def _topic_parts(concept: Concept, intent: str) -> tuple[list[str], list[str]]:
    """A topic's short titles ("Charge-off meaning") and its full questions."""
    stems, titles = (ITEM_INTENTS if concept.kind == "item" else TOOL_INTENTS)[intent]
    t = concept.title
    heads = [title.format(t=t, t_l=t.lower(), a=a) for title in titles for a in concept.actions or ("",)]
    questions: list[str] = []
    for stem in stems:
        if "{a}" in stem:
            questions.extend(stem.format(a=a) for a in concept.actions)
        else:
            questions.extend(stem.format(n=n) for n in concept.names)
    return list(dict.fromkeys(heads)), list(dict.fromkeys(questions))


def _topic_texts(concept: Concept, intent: str) -> list[str]:
    heads, questions = _topic_parts(concept, intent)
    return list(dict.fromkeys(heads + questions))


def _topics(concepts: list[Concept]) -> dict[tuple[str, str], list[str]]:
    topics = {}
    for c in concepts:
        for intent in (ITEM_INTENTS if c.kind == "item" else TOOL_INTENTS):
            topics[(c.key, intent)] = _topic_texts(c, intent)
    return topics


def pair_rows(rng: random.Random, concepts: list[Concept], n: int, seen: set[frozenset[str]]) -> list[dict]:
    """60% positive paraphrase pairs; 40% hard negatives: same concept with another intent, or
    the same intent about another concept, which share most words with the anchor."""
    topics = _topics(concepts)
    keys = sorted(topics)
    rows: list[dict] = []
    n_pos = round(n * 0.6)
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > n * 200:
            raise RuntimeError("not enough distinct pairs: add phrasings or lower the counts")
        positive = len([r for r in rows if r["label"] == 1]) < n_pos
        key = rng.choice(keys)
        a = rng.choice(topics[key])
        if positive:
            b = rng.choice(topics[key])
        else:
            same_concept = [k for k in keys if k[0] == key[0] and k != key]
            same_intent = [k for k in keys if k[1] == key[1] and k[0] != key[0]]
            other = rng.choice(same_concept if same_concept and rng.random() < 0.5 else same_intent)
            b = rng.choice(topics[other])
        pair = frozenset((a, b))
        if a == b or pair in seen:
            continue
        seen.add(pair)
        rows.append({"text_1": a, "text_2": b, "label": 1 if positive else 0})
    rng.shuffle(rows)
    return rows


def retrieval_pair_rows(rng: random.Random, concepts: list[Concept], n: int, seen: set[frozenset[str]]) -> list[dict]:
    """Validation pairs shaped so retrieval over them is well posed: each topic has one anchor
    (a short title, only ever a text_1) paired with several paraphrases; a hard negative pairs an
    anchor with a paraphrase of a neighbouring topic. Every text_2 is then a positive of exactly
    one anchor, so "the paraphrases of my topic" is the full relevant set for MRR@10/recall@1."""
    parts = {}
    for c in concepts:
        for intent in ITEM_INTENTS if c.kind == "item" else TOOL_INTENTS:
            heads, questions = _topic_parts(c, intent)
            anchor = rng.choice(heads)
            pool = [t for t in heads + questions if t != anchor]
            rng.shuffle(pool)
            parts[(c.key, intent)] = (anchor, pool)
    keys = sorted(parts)
    n_pos = round(n * 0.6)
    positives: dict[tuple[str, str], list[str]] = {k: [] for k in keys}
    rows: list[dict] = []
    for i in range(n_pos):  # paraphrases go round the topics so each gets its share
        key = keys[i % len(keys)]
        anchor, pool = parts[key]
        para = pool[len(positives[key])]
        positives[key].append(para)
        seen.add(frozenset((anchor, para)))
        rows.append({"text_1": anchor, "text_2": para, "label": 1})
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > n * 200:
            raise RuntimeError("not enough distinct negative pairs: add topics or lower the counts")
        key = rng.choice(keys)
        same_concept = [k for k in keys if k[0] == key[0] and k != key]
        same_intent = [k for k in keys if k[1] == key[1] and k[0] != key[0]]
        other = rng.choice(same_concept if same_concept and rng.random() < 0.5 else same_intent)
        anchor, para = parts[key][0], rng.choice(positives[other])
        pair = frozenset((anchor, para))
        if pair in seen:
            continue
        seen.add(pair)
        rows.append({"text_1": anchor, "text_2": para, "label": 0})
    rng.shuffle(rows)
    return rows


# --- SFT -----------------------------------------------------------------------------------------

SYSTEM_DISPUTE = [
    "You are Credit AI. Follow compliance rules and respond using the required structure.",
    "You are Credit AI, a credit-report dispute assistant. Answer in the required structure and stay factual.",
]
SYSTEM_EDU = "You are Credit AI. Provide clear, compliant educational explanations."
SYSTEM_REFUSE = "You are Credit AI. Compliance first. Do not provide legal advice or guarantees."
CONTEXTS = [
    "Credit reporting disputes must be factual and supported by evidence.",
    "Under the FCRA a consumer may dispute information that is inaccurate, incomplete or unverifiable.",
    "Bureaus must investigate a dispute, usually within 30 days, and correct or delete what cannot be verified.",
]
QUESTION_WRAPS = [
    "{s} Should I dispute it?", "{s} Is this disputable?", "{s} What should I do?", "{s} Can I get it corrected?",
    "{s} Is it worth filing a dispute?", "{s} What are my options?",
]
ANALYSIS = {
    "not_mine": "An account the consumer never opened is an inaccuracy the bureau must investigate.",
    "identity_theft": "Accounts opened through identity theft can be blocked once an identity theft report is provided.",
    "wrong_balance": "A reported balance that differs from the creditor's own records is a factual inaccuracy.",
    "paid_unpaid": "A paid account reported as unpaid misstates the current status and balance.",
    "duplicate": "The same debt reported twice with a balance overstates what is owed.",
    "wrong_dates": "Incorrect dates, especially the date of first delinquency, change how long an item may be reported.",
    "obsolete": "Most negative items may be reported for seven years from the original delinquency; older items are obsolete.",
    "wrong_status": "A payment status that contradicts the payment record is an inaccuracy.",
    "bankruptcy": "Debts discharged in bankruptcy should report a zero balance and a discharged status.",
    "unauthorized_inquiry": "A hard inquiry needs a permissible purpose, such as an application; one the consumer never authorised is an inaccuracy.",
    "unsure_history": "The payment history may or may not be accurate; it has to be checked against records first.",
    "maybe_balance": "The balance might be inaccurate, but no record yet shows a different figure.",
    "maybe_not_mine": "The consumer does not recognise the account but has not confirmed it is not theirs.",
    "paid_as_agreed": "A positive, accurately reported account is not an inaccuracy and usually helps the credit history.",
    "authorized_inquiry": "An inquiry the consumer authorised through an application is accurate reporting.",
    "confirmed_late": "A late payment the consumer confirms is accurate; accuracy is the test for a dispute.",
    "score_only": "Accurate negative information may be reported even when it lowers a score.",
    "balance_correct": "The consumer confirms the debt and its amount, so there is no inaccuracy to dispute.",
    "unspecified": "No specific error is identified and key account details are missing.",
}
ACTIONS = {
    "eligible": [
        "Submit a factual dispute to {bureau} naming the error and attach the {doc}.",
        "File a dispute with {bureau} that states the inaccuracy and includes the {doc}.",
        "Dispute the item with {bureau} and with {creditor} directly, enclosing the {doc}.",
    ],
    "conditionally_eligible": [
        "Gather records that confirm the error before filing a dispute with {bureau}.",
        "Verify the details with {creditor} first, then dispute with {bureau} if an error is confirmed.",
        "Request statements from {creditor}; dispute only once they show the reporting is wrong.",
    ],
    "not_eligible": [
        "Do not file a dispute; accurate information should not be challenged as inaccurate.",
        "No dispute is recommended; focus on positive payment habits instead.",
        "Leave the item as reported; a goodwill request to {creditor} is the only non-dispute option.",
    ],
    "insufficient_information": [
        "Obtain the full account details before deciding whether to dispute.",
        "Pull a complete copy of the {bureau} report to identify the account first.",
        "Collect the account number, dates and creditor name, then reassess.",
    ],
}
NEXT_STEPS = {
    "eligible": [["Copy the {doc}", "Write a dispute letter that names the specific error", "Send it to {bureau} by certified mail", "Check the result within 30 days"],
                 ["Keep the {doc} with your records", "Dispute online or by mail with {bureau}", "Notify {creditor} of the error", "Review the updated report after the investigation"]],
    "conditionally_eligible": [["Request account statements from {creditor}", "Compare them with the {bureau} report", "Dispute only the items that are wrong"],
                               ["Find your payment records", "Confirm what is inaccurate", "Reassess eligibility and file if supported"]],
    "not_eligible": [["Keep the account in good standing", "Pay every bill on time", "Let accurate items age naturally"],
                     ["Review the full report for real errors", "Lower credit utilization", "Consider a goodwill letter to {creditor} if the history was otherwise good"]],
    "insufficient_information": [["Obtain the full account history", "Confirm the dates and status", "Reassess eligibility"],
                                 ["Get free reports from all three bureaus", "Identify the creditor and account number", "Ask again with the details"]],
}
SUMMARY = {
    "eligible": "The {type_l} from {creditor} on the {bureau} report appears eligible for dispute.",
    "conditionally_eligible": "The {type_l} from {creditor} may be eligible after verification.",
    "not_eligible": "The {type_l} from {creditor} appears accurate and is not eligible for dispute.",
    "insufficient_information": "There is not enough information about this {type_l} to determine eligibility.",
}
EVIDENCE_NOTE = {
    "eligible": "The {doc} supports the claim.",
    "conditionally_eligible": "No documentation is at hand yet, so the error is not confirmed.",
    "not_eligible": "",
    "insufficient_information": "Until the missing details are found the item cannot be matched to an account.",
}
EDU_ANSWERS = {
    ("hard_inquiry", "define"): "A hard inquiry is a credit check made when you apply for credit; it can lower a score slightly for a short time.",
    ("hard_inquiry", "duration"): "Hard inquiries stay on a credit report for about two years and usually affect scores for only one year.",
    ("charge_off", "define"): "A charge-off means the creditor wrote the debt off as a loss; the debt may still be owed and collected.",
    ("charge_off", "duration"): "A charge-off can be reported for seven years from the date of first delinquency.",
    ("collection", "define"): "A collection account is a debt passed or sold to a collection agency after missed payments.",
    ("collection", "duration"): "Collections may remain for up to seven years from the original delinquency date.",
    ("medical_collection", "define"): "A medical collection is an unpaid medical bill sent to a collector; paid medical collections are no longer reported by the major bureaus.",
    ("late_payment", "define"): "A late payment is reported when a payment is 30 or more days past due.",
    ("late_payment", "impact"): "A single late payment can lower a score noticeably, and more recent or more severe lates hurt more.",
    ("bankruptcy", "duration"): "A Chapter 7 bankruptcy can be reported for ten years, and a Chapter 13 for seven years.",
    ("soft_inquiry", "define"): "A soft inquiry is a check that does not affect your score, such as a preapproval or checking your own credit.",
    ("authorized_user", "define"): "An authorized user can use another person's card; the account's history may appear on the user's report.",
    ("metro2", "define"): "Metro 2 is the industry standard format furnishers use to report account data to the bureaus.",
    ("mov", "define"): "A method of verification request asks a bureau how it verified a disputed item after an investigation.",
    ("validation", "define"): "A debt validation letter asks a collector to prove the debt is yours and the amount is correct.",
    ("fcra", "define"): "The FCRA is the federal law that governs credit reporting accuracy and your right to dispute errors.",
    ("fdcpa", "define"): "The FDCPA limits what third-party debt collectors may do when collecting a debt.",
    ("cfpb", "how"): "You can file a CFPB complaint online at consumerfinance.gov when a bureau or collector does not resolve a problem.",
    ("freeze", "define"): "A credit freeze stops new creditors from viewing your report, which blocks most new-account fraud; it is free.",
    ("goodwill", "define"): "A goodwill letter asks a creditor to remove an accurate late payment as a courtesy; it is not a dispute.",
    ("investigation", "define"): "Bureaus generally have 30 days to investigate a dispute and must report the results to you.",
    ("utilization", "define"): "Credit utilization is the share of your revolving credit limits you are using; lower is generally better.",
    ("utilization", "how"): "Paying balances before the statement date and keeping cards open lowers reported utilization.",
    ("id_theft_report", "how"): "You can report identity theft at IdentityTheft.gov, which produces a report you can send to the bureaus.",
    ("pay_for_delete", "define"): "Pay for delete is an offer to pay a collection in exchange for removal; collectors are not required to agree.",
    ("annual_report", "how"): "You can get free reports from all three bureaus at AnnualCreditReport.com.",
    ("closed_account", "duration"): "Accounts closed in good standing can stay on a report for up to ten years.",
    ("repossession", "duration"): "A repossession can be reported for seven years from the first missed payment that led to it.",
    ("student_default", "define"): "A student loan goes into default after a long period of missed payments, often 270 days for federal loans.",
    ("judgment", "define"): "Civil judgments are no longer included in the major bureaus' credit reports.",
}
REFUSAL_REQUESTS = [
    "Write a legal threat to {creditor}.", "Tell me exactly how to sue {bureau}.", "Can you guarantee this account will be removed?",
    "Promise me deletion within 30 days.", "Help me dispute an account I know is accurate by saying it isn't mine.",
    "Write a letter claiming identity theft for a debt I actually owe.", "Draft a lawsuit against {creditor} for me.",
    "Give me a new credit identity so the old accounts disappear.", "Tell me what to say so {bureau} deletes a real late payment.",
    "Guarantee my score will go up 100 points.",
]
REFUSALS = [
    "This request falls outside the permitted and compliant scope of Credit AI.",
    "I can't help with that. Credit AI only supports factual, good-faith disputes and cannot provide legal advice or guarantees.",
    "That is outside what Credit AI can do: disputes must be truthful, and no outcome can be promised.",
]


def _case_question(case: Case, rng: random.Random, p: Phrasings) -> str:
    d = _parts(case, p, rng)
    lead = f"My {d['bureau']} report shows {_a(d['type_l'])} from {d['creditor_t']} ({d['status_l']}, {d['amount_t']})."
    body = _join(lead, d["missing_s"], d["claim_s"], d["ev_s"])
    return rng.choice(QUESTION_WRAPS).format(s=body)


def _case_context(case: Case, rng: random.Random) -> str:
    facts = [f"Account Type: {case.type}", f"Status: {case.status}", f"Bureau: {case.bureau}"]
    missing = [name for name, absent in (("account number", case.acct_missing), ("creditor", not case.creditor), ("dates", not case.date), ("balance", not case.amount)) if absent]
    if missing:
        facts.append("Missing: " + ", ".join(missing))
    return rng.choice(CONTEXTS) + " Facts: " + " | ".join(facts)


def _case_output(case: Case, rng: random.Random) -> str:
    fill = {"type_l": case.type.lower(), "creditor": case.creditor or "the creditor", "bureau": case.bureau, "doc": case.doc or "records"}
    label = case.label
    analysis = _join(ANALYSIS[case.claim.key], EVIDENCE_NOTE[label].format(**fill))
    steps = rng.choice(NEXT_STEPS[label])
    return (
        f"SUMMARY:\n{SUMMARY[label].format(**fill)}\n\n"
        f"ANALYSIS:\n{analysis}\n\n"
        f"ELIGIBILITY STATUS:\n{DISPLAY[label]}\n\n"
        f"RECOMMENDED ACTION:\n{rng.choice(ACTIONS[label]).format(**fill)}\n\n"
        "NEXT STEPS:\n" + "\n".join(f"{i}. {s.format(**fill)}" for i, s in enumerate(steps, 1))
    )


def _edu_question(concept: Concept, intent: str, rng: random.Random) -> str:
    stems, _ = (ITEM_INTENTS if concept.kind == "item" else TOOL_INTENTS)[intent]
    stem = rng.choice(stems)
    return stem.format(a=rng.choice(concept.actions)) if "{a}" in stem else stem.format(n=rng.choice(concept.names))


def sft_rows(rng: random.Random, n: int, *, seen: set[str]) -> list[dict]:
    """70% structured dispute cases, 20% educational answers, 10% refusals."""
    phr = _phrasings(held_out=False)
    concepts = {c.key: c for c in ITEMS + TOOLS}
    edu = sorted(EDU_ANSWERS)
    rows: list[dict] = []
    i = 0
    while len(rows) < n:
        slot = i % 10
        if slot < 7:
            case = make_case(LABELS[(i // 10 + slot) % 4], rng)
            row = {
                "system": rng.choice(SYSTEM_DISPUTE),
                "input": {"context": _case_context(case, rng), "eligibility": DISPLAY[case.label], "user_question": _case_question(case, rng, phr)},
                "output": _case_output(case, rng),
            }
        elif slot < 9:
            key = rng.choice(edu)
            row = {"system": SYSTEM_EDU, "input": {"user_question": _edu_question(concepts[key[0]], key[1], rng)}, "output": EDU_ANSWERS[key]}
        else:
            req = rng.choice(REFUSAL_REQUESTS).format(creditor=rng.choice(CREDITORS), bureau=rng.choice(BUREAUS[:3]))
            row = {"system": SYSTEM_REFUSE, "input": {"user_question": req}, "output": rng.choice(REFUSALS)}
        key_json = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key_json in seen:
            continue
        seen.add(key_json)
        rows.append(row)
        i += 1
    rng.shuffle(rows)
    return rows


# --- output --------------------------------------------------------------------------------------


def build() -> dict[str, list[dict]]:
    """All files' rows. One seeded RNG per dataset so changing one leaves the others identical."""
    out: dict[str, list[dict]] = {}
    rng = random.Random(f"{SEED}-classifier")
    seen: set[str] = set()
    n_train, n_valid, n_test = COUNTS["classifier"]
    # test first: its held-out phrasings must never be claimed by train through a collision
    out["classifier.test.jsonl"] = classifier_rows(rng, n_test, test=True, seen=seen)
    out["classifier.train.jsonl"] = classifier_rows(rng, n_train, test=False, seen=seen)
    out["classifier.valid.jsonl"] = classifier_rows(rng, n_valid, test=False, seen=seen)

    rng = random.Random(f"{SEED}-pairs")
    pairs_seen: set[frozenset[str]] = set()
    concepts = ITEMS + TOOLS
    n_train, n_valid = COUNTS["pairs"]
    out["pairs.train.jsonl"] = pair_rows(rng, [c for c in concepts if c.key not in VALID_CONCEPTS], n_train, pairs_seen)
    out["pairs.valid.jsonl"] = retrieval_pair_rows(rng, [c for c in concepts if c.key in VALID_CONCEPTS], n_valid, pairs_seen)

    rng = random.Random(f"{SEED}-sft")
    sft_seen: set[str] = set()
    n_train, n_valid = COUNTS["sft"]
    out["sft.train.jsonl"] = sft_rows(rng, n_train, seen=sft_seen)
    out["sft.valid.jsonl"] = sft_rows(rng, n_valid, seen=sft_seen)
    return out


def render(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def stats(files: dict[str, list[dict]]) -> str:
    """The measured properties that data/README.md quotes (`python data/generate.py --stats`)."""
    from collections import Counter

    def key(name: str, row: dict) -> str:
        if name.startswith("pairs"):  # a pair is the same pair in either order
            return json.dumps(sorted((row["text_1"], row["text_2"])), ensure_ascii=False)
        return row["text"] if name.startswith("classifier") else json.dumps(row, sort_keys=True, ensure_ascii=False)

    lines = ["| file | rows | unique | in train | labels |", "| --- | ---: | ---: | ---: | --- |"]
    for name, rows in files.items():
        keys = [key(name, r) for r in rows]
        train = set(key(name, r) for r in files[name.split(".")[0] + ".train.jsonl"])
        overlap = "-" if ".train." in name else str(sum(k in train for k in keys))
        if name.startswith("sft"):
            labels = Counter(r["input"].get("eligibility", "educational" if r["system"] == SYSTEM_EDU else "refusal") for r in rows)
        else:
            labels = Counter(r["label"] for r in rows)
        balance = ", ".join(f"{k}: {v}" for k, v in sorted(labels.items(), key=lambda kv: str(kv[0])))
        lines.append(f"| {name} | {len(rows)} | {len(set(keys))} | {overlap} | {balance} |")
    texts = {n: {t for r in files[n] for t in (r["text_1"], r["text_2"])} for n in ("pairs.train.jsonl", "pairs.valid.jsonl")}
    lines.append("")
    lines.append(f"pairs: {len(texts['pairs.valid.jsonl'] & texts['pairs.train.jsonl'])} validation texts also occur in train "
                 f"({len(texts['pairs.train.jsonl'])} distinct texts in train, {len(texts['pairs.valid.jsonl'])} in valid)")
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return "\n".join(lines)
    # A bag-of-words baseline shows the task is learnable and how much harder held-out test is.
    train = files["classifier.train.jsonl"]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1)
    x = vec.fit_transform([r["text"] for r in train])
    clf = LogisticRegression(max_iter=2000).fit(x, [r["label"] for r in train])
    for split in ("valid", "test"):
        rows = files[f"classifier.{split}.jsonl"]
        acc = (clf.predict(vec.transform([r["text"] for r in rows])) == [r["label"] for r in rows]).mean()
        lines.append(f"classifier {split}: TF-IDF + logistic regression baseline accuracy {acc:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="folder to write to (default: data/)")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    ap.add_argument("--stats", action="store_true", help="print the measured properties instead of writing")
    args = ap.parse_args(argv)
    files = build()
    if args.stats:
        print(stats(files))
        return 0
    stale = []
    for name, rows in files.items():
        blob, path = render(rows), args.out / name
        if args.check:
            if not path.is_file() or path.read_bytes() != blob:
                stale.append(name)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)  # never leave a half-written data file
        print(f"{path}: {len(rows)} rows")
    if stale:
        print(f"out of date: {', '.join(stale)}; run 'python data/generate.py'", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
