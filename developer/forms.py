"""Forms of the developer page."""

from __future__ import annotations

from django import forms


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, label="Key name", help_text="what the key is for, e.g. 'laptop' or 'CI'")


class VoucherForm(forms.Form):
    code = forms.CharField(max_length=40, label="Voucher code")


class DataTermsForm(forms.Form):
    # The version the page showed: acknowledging terms that changed meanwhile is refused.
    version = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    acknowledge = forms.BooleanField(
        required=True, label="I understand that contributors see the inputs and outputs of my jobs on this subnet"
    )
