"""Where an order goes and how to reach its customer: the shipping address and phone.

Validation lives here, once, for the create form, the service and the admin. It checks
what a carrier's label needs (a street line, a postcode in the country's format, a city,
a country we ship to) and a phone number a person can dial; whether a carrier actually
serves the address is the carrier's answer at booking ("address not serviceable").
"""

import re
from dataclasses import asdict, dataclass

# Countries the shop ships to (ISO 3166-1 alpha-2) and their names for pages and forms.
COUNTRIES = {
    "AT": "Austria", "BE": "Belgium", "CH": "Switzerland", "DE": "Germany", "DK": "Denmark",
    "ES": "Spain", "FI": "Finland", "FR": "France", "GB": "United Kingdom", "IE": "Ireland",
    "IT": "Italy", "LU": "Luxembourg", "NL": "Netherlands", "NO": "Norway", "PL": "Poland",
    "PT": "Portugal", "SE": "Sweden", "US": "United States", "CA": "Canada",
}

# Postcode formats where the country has one we can check; others need 2-10 letters/digits.
_POSTCODES = {
    "AT": r"\d{4}", "BE": r"\d{4}", "CH": r"\d{4}", "DE": r"\d{5}", "DK": r"\d{4}",
    "ES": r"\d{5}", "FI": r"\d{5}", "FR": r"\d{5}", "IT": r"\d{5}", "LU": r"(L-?)?\d{4}",
    "NL": r"\d{4} ?[A-Z]{2}", "NO": r"\d{4}", "PL": r"\d{2}-\d{3}", "PT": r"\d{4}-\d{3}",
    "SE": r"\d{3} ?\d{2}", "US": r"\d{5}(-\d{4})?", "CA": r"[A-Z]\d[A-Z] ?\d[A-Z]\d",
    "GB": r"[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}", "IE": r"[A-Z]\d[\dW] ?[A-Z\d]{4}",
}
_POSTCODE_ANY = r"[A-Z\d][A-Z\d -]{0,8}[A-Z\d]"
# Digits with the separators people write; a leading + for the international form.
_PHONE = re.compile(r"^\+?[\d ()./-]+$")
PHONE_MIN_DIGITS, PHONE_MAX_DIGITS = 7, 15  # E.164 allows at most 15 digits

FIELD_LIMITS = {"ship_name": 200, "ship_line1": 200, "ship_line2": 200, "ship_postcode": 20,
                "ship_city": 100, "ship_country": 2, "phone": 32}


@dataclass(frozen=True)
class ShippingAddress:
    """What goes on the parcel's label, cleaned. Also what the carrier adapter receives."""

    name: str
    line1: str
    postcode: str
    city: str
    country: str  # ISO 3166-1 alpha-2
    line2: str = ""
    phone: str = ""

    def lines(self) -> list[str]:
        """The address as printed on a label, one line each (no blank ones)."""
        return [s for s in (self.name, self.line1, self.line2, f"{self.postcode} {self.city}",
                            COUNTRIES.get(self.country, self.country)) if s]

    def as_order_fields(self) -> dict[str, str]:
        return {f"ship_{k}" if k != "phone" else k: v for k, v in asdict(self).items()}


class AddressInvalid(ValueError):
    """Per-field messages (keys are the Order field names: ship_line1, phone, …)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def _collapse(value) -> str:
    return " ".join(str(value or "").split())


def address_clean(*, name: str, line1: str, line2: str = "", postcode: str, city: str, country: str,
                  phone: str = "") -> ShippingAddress:
    """Normalise (whitespace, upper-case postcode and country) and check; raises AddressInvalid."""
    name, line1, line2, city = map(_collapse, (name, line1, line2, city))
    postcode, country, phone = _collapse(postcode).upper(), _collapse(country).upper(), _collapse(phone)
    errors: dict[str, str] = {}
    if not name:
        errors["ship_name"] = "Enter the name the parcel is addressed to."
    if not line1:
        errors["ship_line1"] = "Enter the street and house number."
    if not city:
        errors["ship_city"] = "Enter the town or city."
    if country not in COUNTRIES:
        errors["ship_country"] = ("Choose a country we ship to." if country
                                  else "Choose the country the parcel goes to.")
    if not postcode:
        errors["ship_postcode"] = "Enter the postcode."
    elif not re.fullmatch(_POSTCODES.get(country, _POSTCODE_ANY), postcode):
        where = COUNTRIES.get(country)
        errors["ship_postcode"] = (f"{postcode} is not a postcode in {where}." if where
                                   else f"{postcode} does not look like a postcode.")
    if phone:
        digits = sum(c.isdigit() for c in phone)
        if not _PHONE.match(phone) or not PHONE_MIN_DIGITS <= digits <= PHONE_MAX_DIGITS:
            errors["phone"] = (f"Enter a phone number of {PHONE_MIN_DIGITS} to {PHONE_MAX_DIGITS} digits, "
                               "e.g. +31 20 123 4567.")
    values = {"ship_name": name, "ship_line1": line1, "ship_line2": line2, "ship_postcode": postcode,
              "ship_city": city, "ship_country": country, "phone": phone}
    for field, limit in FIELD_LIMITS.items():
        if field not in errors and len(values[field]) > limit:
            errors[field] = f"Keep this under {limit} characters."
    if errors:
        raise AddressInvalid(errors)
    return ShippingAddress(name=name, line1=line1, line2=line2, postcode=postcode, city=city, country=country,
                           phone=phone)


def order_shipping_address(order) -> ShippingAddress | None:
    """The order's address as the carrier gets it; None for orders placed before addresses."""
    if not order.ship_line1:
        return None
    return ShippingAddress(name=order.ship_name or order.customer_name, line1=order.ship_line1,
                           line2=order.ship_line2, postcode=order.ship_postcode, city=order.ship_city,
                           country=order.ship_country, phone=order.phone)
