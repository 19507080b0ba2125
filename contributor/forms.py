"""Forms of the contributor pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm

from bim_core.money import credits_to_micro
from ledger.payouts import METHOD_CHOICES


class SignUpForm(UserCreationForm):
    """An ordinary Django account: the same one submits jobs, owns nodes and earns."""

    class Meta(UserCreationForm.Meta):
        fields = ("username",)


class OptInForm(forms.Form):
    """The license as it was shown: accepting a version the subnet no longer uses is refused."""

    license_version = forms.CharField(max_length=32, widget=forms.HiddenInput)
    accept = forms.BooleanField(
        required=True, label="I have read the license above and accept it for the work my browser does"
    )


class WithdrawForm(forms.Form):
    """A withdrawal of one of the user's nodes' earnings, in credits."""

    node = forms.ChoiceField(label="Node")
    credits = forms.CharField(max_length=30, label="Credits", help_text="e.g. 2 or 1.5")

    def __init__(self, *args: Any, nodes: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes = {str(node.pk): node for node in nodes}
        self.fields["node"].choices = [(pk, node.name) for pk, node in self.nodes.items()]

    def clean_node(self) -> Any:
        return self.nodes[self.cleaned_data["node"]]  # ChoiceField allows only the user's own

    def clean_credits(self) -> int:
        try:
            micro = credits_to_micro(self.cleaned_data["credits"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if micro <= 0:
            raise forms.ValidationError("more than zero credits")
        return micro


class PayoutDestinationForm(forms.Form):
    """Where withdrawals are paid; the password guards it (ledger.payouts checks it)."""

    method = forms.ChoiceField(choices=METHOD_CHOICES, label="Paid by")
    address = forms.CharField(max_length=100, label="IBAN or PayPal e-mail")
    password = forms.CharField(widget=forms.PasswordInput, label="Your password", strip=False)
