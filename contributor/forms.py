"""Forms of the contributor pages."""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm


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
