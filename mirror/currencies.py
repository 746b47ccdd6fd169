"""The currencies a price or a usage line may be in: ISO 4217's circulating currencies.

fal bills in US dollars, and mirror adds up only USD (``mirror.cost.CURRENCY``); a price in
another real currency is kept and its requests count as unpriced. A three-letter code that
is no currency at all (``ZZZ``, ``XXX``, ``ABC``) is not a price mirror can keep: it is
refused as bad data, like a malformed one (``mirror.billing_api``).

The list is fixed here because neither Python nor any of mirror's dependencies ships
ISO 4217's (``pycountry`` or ``babel`` would be a runtime dependency for this one set). It
is ISO 4217's list one of current currency codes, without the codes that are no money one
is charged in: precious metals (``XAU``…), funds and units of account (``XDR``, ``CLF``,
``USN``…), the testing code ``XTS`` and ``XXX`` ("no currency"). ISO adds a code a year
or so (``ZWG`` in 2024, ``XCG`` in 2025); one missing here fails the cost step with a line
naming it, never silently, until mirror is updated.
"""

from __future__ import annotations

__all__ = ["KNOWN", "is_known"]

_CODES = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD
    BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK
    JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA
    MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK
    PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV
    WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
"""
KNOWN: frozenset[str] = frozenset(_CODES.split())


def is_known(code: str) -> bool:
    """Whether ``code`` is a current ISO 4217 currency one can be charged in."""
    return code in KNOWN
