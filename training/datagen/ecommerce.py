"""Settings of the Northwind Goods (e-commerce) dialogs: split sizes, topic mix, card notes.

The phrasings live in ``phrases/ecommerce.yaml``; ``engine`` turns them into dialogs.
Regenerate with ``python -m training.datagen --domain ecommerce``.
"""

from __future__ import annotations

from training.datagen.engine import DomainConfig
from training.dialogs import LORA_SYSTEM_PROMPTS

# Relative weights per topic: the spec table's topics many times each, ~10% out of scope.
TOPIC_WEIGHTS = {
    "shipping_regions": 6, "standard_shipping": 7, "express_shipping": 4, "dispatch_cutoff": 4,
    "order_tracking": 6, "cancelling": 6, "address_change": 4, "returns": 9, "return_shipping": 4,
    "final_sale": 4, "refunds": 5, "exchanges": 4, "damaged_wrong_item": 5, "price_adjustment": 4,
    "warranty": 4, "payment_methods": 4, "loyalty": 4, "human_support": 4, "upset_customer": 3,
    "security": 4, "not_covered": 6, "prompt_injection": 4, "out_of_scope": 11.5,
}

CONFIG = DomainConfig(
    domain="ecommerce",
    system_prompt=LORA_SYSTEM_PROMPTS["ecommerce"],
    sizes={"train": 600, "validation": 80, "test": 120},
    topic_weights=TOPIC_WEIGHTS,
    multi_rate={"*": 0.36, "out_of_scope": 0.25, "prompt_injection": 0.25, "security": 0.3, "upset_customer": 0.45},
    upset_rate=0.08,
)

TITLE = "Northwind Goods support dialogs (ecommerce)"

TOPIC_NOTES = {
    "shipping_regions": "US and Canada only (incl. 'do you ship to the UK?')",
    "standard_shipping": "3-5 business days; free over $50, else $4.99 (incl. cart totals above/below $50)",
    "express_shipping": "1-2 business days, $14.99; free shipping applies to standard only",
    "dispatch_cutoff": "before 2 pm ET on a business day ships the same day (incl. later orders, other time zones)",
    "order_tracking": "tracking number emailed on shipping, also Account > Orders; no order look-ups here",
    "cancelling": "within 1 hour via Account > Orders > Cancel, else return after delivery",
    "address_change": "until the order ships, via live chat",
    "returns": "30 days from delivery, unused, original packaging, Account > Orders > Return",
    "return_shipping": "free for defective/wrong items, else $5.95 deducted",
    "final_sale": "gift cards, personalised items, clearance marked 'final sale'",
    "refunds": "original payment method, 5-7 business days after the warehouse receives the return",
    "exchanges": "size/colour exchanges free within 30 days of delivery",
    "damaged_wrong_item": "report within 48 hours with a photo: replacement or full refund",
    "price_adjustment": "price drop within 14 days of purchase: difference refunded once per order",
    "warranty": "1-year limited warranty on electronics and small appliances only",
    "payment_methods": "Visa, Mastercard, Amex, PayPal, Apple Pay, Northwind gift cards; no COD",
    "loyalty": "1 point per $1; 100 points = $5 off (incl. arithmetic)",
    "human_support": "live chat 8 am-8 pm ET Mon-Sat, support@northwindgoods.example",
    "not_covered": (
        "questions the spec does not answer (price matching, coupons, store pickup, gift wrap, stock, PO "
        "boxes...): say so, offer a human agent"
    ),
    "upset_customer": "angry customers: apologise, offer live chat / email (upset personas also appear on other topics)",
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
    "Only English; typos are synthetic (swaps, drops, doubled letters, neighbouring keys), as are casing and punctuation noise.",
    "Multi-turn follow-ups come from a fixed graph of natural next questions; long digressions and corrections by the user are rare.",
]
