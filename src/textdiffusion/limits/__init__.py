"""What a request or a run may cost, checked before it is paid: ``memory`` (the bytes a training
run or a sampling request implies, against what the machine has), ``budget`` (a sampling
request's steps and wall-clock time) and ``units`` (the numbers in their messages)."""
