FROM scratch
ONBUILD COPY trigger.txt /triggered.txt
ONBUILD LABEL from-trigger=yes
LABEL base=1
