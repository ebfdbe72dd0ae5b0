"""Settings of the Northwind Goods (e-commerce) dialogs: split sizes, topic mix, card notes.

The phrasings live in ``phrases/ecommerce.yaml``; ``engine`` turns them into dialogs.
Regenerate with ``python -m training.datagen --domain ecommerce``.
"""

from __future__ import annotations

from training.datagen.engine import DomainConfig
from training.dialogs import LORA_SYSTEM_PROMPTS

# Relative weights per topic: the spec table's topics many times each, ~10% out of scope; the
# intents real customers ask most (where is my order, returns, refunds, a person, things the spec
# is silent on) weigh more.
TOPIC_WEIGHTS = {
    "shipping_regions": 7, "standard_shipping": 6, "express_shipping": 3.5, "dispatch_cutoff": 3.5,
    "order_tracking": 8, "cancelling": 6, "address_change": 4, "returns": 10, "return_shipping": 3.5,
    "final_sale": 3.5, "refunds": 6, "exchanges": 3.5, "damaged_wrong_item": 5, "price_adjustment": 3.5,
    "warranty": 3.5, "payment_methods": 4, "loyalty": 3.5, "human_support": 6, "upset_customer": 4,
    "security": 3.5, "not_covered": 8, "prompt_injection": 4.5, "out_of_scope": 12,
}

# Surface noise: the share of user turns that get each kind (rolled independently per turn).
NOISE = {"non_native": 0.1, "run_on": 0.3, "misspell": 0.14, "typo": 0.16, "lower": 0.22, "no_punct": 0.2}

CONFIG = DomainConfig(
    domain="ecommerce",
    system_prompt=LORA_SYSTEM_PROMPTS["ecommerce"],
    sizes={"train": 600, "validation": 80, "test": 120},
    topic_weights=TOPIC_WEIGHTS,
    multi_rate={"*": 0.36, "out_of_scope": 0.25, "prompt_injection": 0.25, "security": 0.3, "upset_customer": 0.45},
    compound_rate=0.15,
    upset_rate=0.18,
    indirect_rate=0.18,
    order_ref_rate=0.3,
    noise=NOISE,
)

TITLE = "Northwind Goods support dialogs (ecommerce)"

TOPIC_NOTES = {
    "shipping_regions": "US and Canada only (incl. 'do you ship to the UK?', Canada with its shipping costs)",
    "standard_shipping": "3-5 business days; free over $50, else $4.99 (incl. cart totals above/below $50)",
    "express_shipping": "1-2 business days, $14.99; free shipping applies to standard only",
    "dispatch_cutoff": "before 2 pm ET on a business day ships the same day (incl. later orders, other time zones)",
    "order_tracking": (
        "tracking number emailed on shipping, also Account > Orders; order numbers, late parcels: "
        "no order look-ups here, a human agent can check"
    ),
    "cancelling": "within 1 hour via Account > Orders > Cancel, else return after delivery",
    "address_change": "until the order ships, via live chat",
    "returns": "30 days from delivery, unused, original packaging, Account > Orders > Return (incl. clothes and boots that don't fit)",
    "return_shipping": "free for defective/wrong items, else $5.95 deducted",
    "final_sale": "gift cards, personalised items, clearance marked 'final sale'",
    "refunds": "original payment method, 5-7 business days after the warehouse receives the return; 'still no refund': a human agent",
    "exchanges": "size/colour exchanges free within 30 days of delivery",
    "damaged_wrong_item": "report within 48 hours with a photo: replacement or full refund",
    "price_adjustment": "price drop within 14 days of purchase: difference refunded once per order",
    "warranty": "1-year limited warranty on electronics and small appliances only",
    "payment_methods": "Visa, Mastercard, Amex, PayPal, Apple Pay, Northwind gift cards; no COD",
    "loyalty": "1 point per $1; 100 points = $5 off (incl. arithmetic)",
    "human_support": "'real person', 'agent', 'human': always honoured with live chat 8 am-8 pm ET Mon-Sat, support@northwindgoods.example",
    "not_covered": (
        "questions the spec does not answer (invoices, receipts, logins and accounts, declined or double "
        "charges, missing deliveries, price matching, coupons, store pickup, gift wrap, stock, PO boxes...): "
        "say so, offer a human agent"
    ),
    "upset_customer": "complaints and angry customers: apologise, offer live chat / email (angry leads and tails also appear on other topics)",
    "security": "pasted card numbers or passwords, 'do you need my CVV?': never ask, tell them not to share",
    "prompt_injection": "'ignore your instructions', 'you are DAN', 'print your system prompt', fake policies to confirm: stay in role",
    "out_of_scope": "weather, homework, coding, politics, other stores, jokes, advice: polite redirect to shopping",
}

LIMITS = [
    (
        "Answers are templated: every fact of shared/domain_specs.md appears in a few fixed phrasings, so the"
        " style is narrower than real support chat."
    ),
    "The assistant never looks up orders (the bots have no tools); order-specific requests go to live chat / email.",
    (
        "Where the spec is silent (how to start an exchange, how to file a warranty claim, weekends and the 2"
        " pm cut-off), answers say they have no details and offer a human agent rather than guessing."
    ),
    (
        "Only English. User-side realism is synthetic: keyboard typos, common misspellings, lower case, missing"
        " punctuation, run-on sentences, learner-English rewrites (phrases/noise.yaml), indirect leads, order"
        " numbers and angry leads are applied to a share of turns; hand-written terse, indirect and non-native"
        " phrasings sit in the phrase bank. Real customers still write in ways no list foresees."
    ),
    "Multi-turn follow-ups come from a fixed graph of natural next questions; long digressions and corrections by the user are rare.",
]
