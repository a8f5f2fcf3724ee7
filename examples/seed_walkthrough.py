import finetune as torch            # the library is meant to read like PyTorch
from finetune.autograd import Variable
x = Variable(torch.ones(2, 2), requires_grad=True); print(x)
y = x + 2; print(y); print(y.grad_fn)
z = y * y * 3; out = z.mean(); print(z, out)
out.backward(); print(x.grad)          # tensor([[4.5000, 4.5000], [4.5000, 4.5000]])
x = Variable(torch.randn(3), requires_grad=True)
y = x * 2
while y.data.norm() < 1000:
    y = y * 2
y.backward(torch.FloatTensor([0.1, 1.0, 0.0001])); print(x.grad)   # 2**k * [0.1, 1.0, 0.0001]
